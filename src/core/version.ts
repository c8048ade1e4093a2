/** The version of heimdall-tasks, as in package.json (test/unit/version.test.ts keeps them equal). */
export const VERSION = '0.1.0';
