export { heimdallTracing, MESSAGING_SYSTEM } from './heimdall-tracing.js';
export type { HeimdallTracing, HeimdallTracingOptions } from './heimdall-tracing.js';
