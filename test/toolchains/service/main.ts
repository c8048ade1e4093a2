// Entry point of the toolchains that build a program (tsc, swc, esbuild, tsx).
import { report } from './probe.js';

report();
