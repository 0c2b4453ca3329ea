# rtretry: a patch set against the livekit/agents monorepo (Python, LINE) and the agents-js
# monorepo (npm, JSLINE). Patches are the source of truth; the upstream trees (livekit-agents/,
# livekit-plugins/, agents-js/) are generated. `make help` lists targets.

LINE    ?= 1.8.9
JSLINE  ?= js-1.9.0
JSPQ    := python3 tools/pq.py --line $(JSLINE)
JSNPM   := python3 tools/pq_npm.py --line $(JSLINE)
EMU_VENV := .venv-emulator
PYTHON  ?= python3
PQ      := $(PYTHON) tools/pq.py --line $(LINE)

BUILD_VENV    := build/build-venv
VENV          := .venv
PRISTINE_VENV := .venv-pristine
SDISTS        := .cache/sdist/$(LINE)
PYTEST_ARGS   ?=
BENCH_ARGS    ?=
CHAOS_MINUTES ?= 15
CHAOS_ARGS    ?=

.DEFAULT_GOAL := help
.PHONY: help fetch apply apply-pristine export check-export check-series cover check-cover pr wheels venv \
        venv-pristine lint typecheck pytest pristine-check review-check monorepo-check upstream-suite test bench chaos \
        clean distclean js-apply js-packages js-check-export js-check-series venv-emulator js-lint \
        js-test js-upstream-tests js-pristine-check js-bench

help: ## list the targets
	@echo "rtretry patch set on livekit-agents (LINE=$(LINE); other lines: LINE=<version>)"
	@echo
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1|\2/' \
	  | sed 's/$$(LINE)/$(LINE)/g; s/$$(JSLINE)/$(JSLINE)/g' | awk -F'|' '{ printf "  %-18s %s\n", $$1, $$2 }'

fetch: ## download the pinned upstream sdists from PyPI and verify their sha256
	$(PQ) fetch

apply: ## generate livekit-agents/ + livekit-plugins/ and git-am patches/$(LINE)/
	$(PQ) apply

apply-pristine: ## generate the upstream tree with no patch applied
	$(PQ) apply --pristine

export: ## rewrite patches/$(LINE)/ from the commits in the generated tree
	$(PQ) export

check-export: ## apply + export must leave patches/$(LINE)/ byte-identical
	$(PQ) check-export

check-series: venv ## every prefix applies, compiles, passes its travelling tests and the pins; each patch's tests fail without it
	$(PQ) check-series --python $(VENV)/bin/python

cover: ## regenerate patches/$(LINE)/COVER.md (below its marker) from the series
	$(PQ) cover

check-cover: ## patches/$(LINE)/COVER.md must be what make cover writes
	$(PQ) check-cover

pr: ## build/pr/: each patch as a pull request (title, body, patch without queue trailers), INDEX.md
	$(PQ) pr

PATCHES      := upstream/$(LINE).toml patches/$(LINE)/series $(wildcard patches/$(LINE)/*.patch)
WHEELS_STAMP := dist/.built-$(LINE)

$(BUILD_VENV)/.ok: requirements/build.txt
	rm -rf $(BUILD_VENV) && $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/pip install -q -r requirements/build.txt
	touch $@

$(WHEELS_STAMP): $(BUILD_VENV)/.ok $(PATCHES) tools/pq.py $(wildcard tools/patchqueue/*.py)
	$(PQ) apply
	$(PQ) wheels --python $(BUILD_VENV)/bin/python
	touch $@

wheels: $(WHEELS_STAMP) js-packages ## build the forked wheels AND npm tarballs into dist/, verified

$(VENV)/.ok: $(WHEELS_STAMP) requirements/test.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements/test.txt
	$(VENV)/bin/pip install -q --force-reinstall --no-deps dist/*.whl
	$(VENV)/bin/pip install -q dist/*.whl
	$(VENV)/bin/pip check
	touch $@

venv: $(VENV)/.ok ## .venv: the forked wheels + test tools

$(PRISTINE_VENV)/.ok: upstream/$(LINE).toml requirements/test.txt
	$(PQ) fetch
	test -x $(PRISTINE_VENV)/bin/python || $(PYTHON) -m venv $(PRISTINE_VENV)
	$(PRISTINE_VENV)/bin/pip install -q -r requirements/test.txt $(SDISTS)/*.tar.gz
	touch $@

venv-pristine: $(PRISTINE_VENV)/.ok ## .venv-pristine: unpatched upstream (the verified sdists)

lint: venv ## ruff (upstream's config) over our code, and over the files the series touches
	$(VENV)/bin/ruff check testbed tools bench
	$(VENV)/bin/ruff format --check testbed tools bench
	$(PQ) touched | xargs -r $(VENV)/bin/ruff check --config pyproject.toml
	$(PQ) touched | xargs -r $(VENV)/bin/ruff format --check --config pyproject.toml

typecheck: venv ## mypy --strict: no new errors in the files the series touches
	$(PYTHON) tools/typecheck.py --line $(LINE) --python $(VENV)/bin/python

pytest: venv ## the test suite against the forked wheels
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

pristine-check: venv-pristine ## the regression tests must fail on pristine upstream; the pins pass there
	$(PRISTINE_VENV)/bin/python -m pytest --pristine $(PYTEST_ARGS)
	$(PRISTINE_VENV)/bin/python -m pytest testbed/test_pins.py -q

# ROUND:COMMIT per review round: the last commit whose series predates that round's fixes;
# the round's review tests must fail there (round 1: the 9-patch series; round 2: 21 patches)
REVIEW_BASES ?= 1:6b87b3c 2:ad4315c
REVIEW_TREE := build/review-base
review-check: venv ## the review-marked tests of each round must fail on the series before its fixes
ifeq ($(strip $(REVIEW_BASES)),)
	@echo "review-check: skipped (give REVIEW_BASES=<round>:<git ref of the series before it> ...)"
else
	@set -e; for spec in $(REVIEW_BASES); do \
	  round=$${spec%%:*}; base=$${spec#*:}; \
	  echo "review-check: round $$round on the series at $$base"; \
	  rm -rf $(REVIEW_TREE) && git worktree prune; \
	  git worktree add --detach $(REVIEW_TREE) $$base; \
	  mkdir -p $(REVIEW_TREE)/.cache && cp -r .cache/sdist $(REVIEW_TREE)/.cache/; \
	  $(MAKE) -C $(REVIEW_TREE) venv; \
	  status=0; $(REVIEW_TREE)/.venv/bin/python -m pytest --reproduce=review:$$round $(PYTEST_ARGS) \
	    || status=$$?; \
	  git worktree remove --force $(REVIEW_TREE); \
	  if [ $$status -ne 0 ]; then exit $$status; fi; \
	done
endif

UPSTREAM ?=
monorepo-check: venv-pristine ## git am the series onto UPSTREAM's tests/ + the sdists; pytest --unit its tests there
ifeq ($(strip $(UPSTREAM)),)
	@echo "monorepo-check: skipped (give UPSTREAM=<path of a livekit/agents monorepo checkout>)"
else
	$(PYTHON) tools/monorepo_check.py --line $(LINE) --monorepo $(UPSTREAM) --python $(PRISTINE_VENV)/bin/python
endif

upstream-suite: venv venv-pristine ## upstream's unit suite on both builds (UPSTREAM=<livekit/agents checkout>)
ifeq ($(strip $(UPSTREAM)),)
	@echo "upstream-suite: skipped (give UPSTREAM=<path of a livekit/agents monorepo checkout>)"
else
	$(PYTHON) tools/upstream_suite.py --monorepo $(UPSTREAM) --pristine $(PRISTINE_VENV)/bin/python \
	  --patched $(VENV)/bin/python --explained upstream/$(LINE)-suite.txt --out build/upstream-suite
endif

test: lint typecheck pristine-check review-check check-export check-cover check-series pytest monorepo-check upstream-suite js-test ## all that CI runs (both lines)

bench: venv venv-pristine js-bench ## pristine vs patched bench + soak + callgrind instruction count (both lines); bench/REPORT.md, results/
	$(VENV)/bin/pip install -q -r requirements/bench.txt
	$(VENV)/bin/python bench/run.py --line $(LINE) --patched $(VENV)/bin/python \
	  --pristine $(PRISTINE_VENV)/bin/python $(BENCH_ARGS)

chaos: venv ## long randomized fault exploration (CHAOS_MINUTES=15); writes bench/CHAOS.md
	$(VENV)/bin/python bench/chaos.py --minutes $(CHAOS_MINUTES) $(CHAOS_ARGS)

# --- the agents-js line (npm): JSLINE=js-1.9.0 -------------------------------------------------

JS_STAMP := dist/.built-$(JSLINE)

js-apply: ## generate agents-js/ from the pinned npm tarballs and git-am patches/$(JSLINE)/
	$(JSPQ) apply

$(JS_STAMP): upstream/$(JSLINE).toml patches/$(JSLINE)/series $(wildcard patches/$(JSLINE)/*.patch) \
             tools/pq.py tools/pq_npm.py $(wildcard tools/patchqueue/*.py) $(wildcard tools/js/*)
	$(JSPQ) apply
	$(JSPQ) wheels
	touch $@

js-packages: $(JS_STAMP) ## build (tsup/tsc) + npm pack the forked JS packages, verify in a fresh project

js-check-export: ## apply + export of patches/$(JSLINE)/ must be byte-identical
	$(JSPQ) check-export

js-check-series: ## every prefix of the JS series applies, type-checks, builds, passes the realtime tests
	$(JSPQ) check-series

$(EMU_VENV)/.ok: requirements/emulator.txt
	test -x $(EMU_VENV)/bin/python || $(PYTHON) -m venv $(EMU_VENV)
	$(EMU_VENV)/bin/pip install -q -r requirements/emulator.txt
	touch $@

venv-emulator: $(EMU_VENV)/.ok ## the emulator as a process for the JS tests (aiohttp only)

js-lint: js-packages ## upstream's prettier config over the JS series' added lines and testbed/js
	$(JSNPM) prettier

js-upstream-tests: js-packages venv-emulator ## upstream's shipped realtime vitest tests, patched and pristine
	$(JSNPM) test --build pristine --json build/$(JSLINE)/upstream-pristine.json \
	  plugins/openai/src/realtime/realtime_model.test.ts plugins/openai/src/realtime/gpt_live_model.test.ts
	$(JSNPM) test --build patched --json build/$(JSLINE)/upstream-patched.json \
	  plugins/openai/src/realtime/realtime_model.test.ts plugins/openai/src/realtime/gpt_live_model.test.ts

js-pristine-check: venv-emulator ## the JS regression tests must fail on pristine 1.9.0
	$(JSNPM) pristine-check

js-test: js-lint js-check-export js-upstream-tests js-pristine-check venv-emulator ## the JS line: build, checks, all tests (regressions + conformance on patched)
	$(JSNPM) test --build patched plugins/openai/src/realtime/ rtretry-tests/

js-bench: js-packages venv-emulator ## JS reconnect storm (connections in 10 s) + memory, pristine vs patched
	$(JSNPM) bench

clean: ## remove build outputs and the generated upstream trees (keeps downloaded sdists)
	rm -rf build dist .pq .pq-js-* agents-js livekit-agents livekit-plugins

distclean: clean ## also remove venvs and the sdist cache
	rm -rf $(VENV) $(PRISTINE_VENV) $(EMU_VENV) .cache
