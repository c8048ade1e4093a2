// Registers the tasks of service/services.ts and writes what the registry holds to the file named
// by NAMES_OUT: the task names, the runtime class names and the decorator mode that ran.
import { writeFileSync } from 'node:fs';
import { discover, registeredTasks } from 'heimdall-tasks/internal';
import { decoratorArity, serviceClasses } from './services.js';

export function report(): void {
  // Legacy decorators register at class definition: read that before discover() adds anything.
  const atDefinition = registeredTasks().map((t) => t.name).sort();
  const names = serviceClasses.flatMap((cls) => [...discover(cls).values()].map((t) => t.name)).sort();
  const arity = [...new Set(decoratorArity)];
  const mode = arity.length === 1 && arity[0] === 3 ? 'legacy' : arity.length === 1 && arity[0] === 2 ? 'tc39' : `unknown (${arity.join(',')})`;
  const out = { mode, names, atDefinition, classNames: serviceClasses.map((c) => c.name) };
  const file = process.env.NAMES_OUT;
  if (!file) throw new Error('probe: NAMES_OUT is not set');
  writeFileSync(file, JSON.stringify(out));
}
