/** The generated module (TypeScript source) for the scripts in `dir`; see gen-lua.mjs. Default: src/redis-scripts. */
export function render(dir?: string): string;
/** includes/keys.lua as generated from the key and channel tables of `source` (default: src/core/protocol/queue-keys.ts). */
export function renderKeys(source?: string): string;
