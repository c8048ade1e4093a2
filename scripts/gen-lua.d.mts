/** The generated module (TypeScript source) for the scripts in `dir`; see gen-lua.mjs. Default: src/redis-scripts. */
export function render(dir?: string): string;
