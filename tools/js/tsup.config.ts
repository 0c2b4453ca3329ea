// Build of the forked agents-js packages (tools/pq_npm.py runs tsup once per package, in the
// package's directory). What the published tarballs contain: every source file compiled on its
// own (no bundling), as ESM (.js) and CommonJS (.cjs); declarations come from
// `tsc --emitDeclarationOnly`.
import { readFileSync } from 'fs';
import { join } from 'path';
import type { Options } from 'tsup';

const pkg = JSON.parse(readFileSync(join(process.cwd(), 'package.json'), 'utf-8')) as {
  name: string;
  version: string;
};

// The sources import each other as './x.js'. In the CommonJS output those files are './x.cjs':
// point relative `.js` specifiers (require, import(), from) there.
const RELATIVE_JS = /(require\(|import\(|from\s*)(['"])(\.{1,2}\/[^'"]*?)\.js\2/g;

const options: Options = {
  entry: ['src/**/*.ts'],
  format: ['esm', 'cjs'],
  bundle: false,
  splitting: false,
  shims: true,
  sourcemap: true,
  clean: true,
  dts: false,
  target: 'node16',
  // the packages read their own name and version at run time
  define: {
    __PACKAGE_NAME__: JSON.stringify(pkg.name),
    __PACKAGE_VERSION__: JSON.stringify(pkg.version),
  },
  esbuildOptions(esbuild, { format }) {
    if (format === 'esm') esbuild.packages = 'external';
  },
  plugins: [
    {
      name: 'relative-cjs-specifiers',
      renderChunk(code) {
        if (this.format !== 'cjs') return;
        return { code: code.replace(RELATIVE_JS, '$1$2$3.cjs$2') };
      },
    },
  ],
};

export default options;
