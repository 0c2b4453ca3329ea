/** Injected at build time by tsup via esbuild `define` (as in the agents-js monorepo). */
declare const __PACKAGE_NAME__: string;
declare const __PACKAGE_VERSION__: string;
