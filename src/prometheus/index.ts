export { heimdallMetrics, METRIC_NAMES } from './heimdall-metrics.js';
export type { HeimdallMetrics, HeimdallMetricsOptions } from './heimdall-metrics.js';
