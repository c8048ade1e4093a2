import { ConfigError } from '../errors.js';
import { describe } from '../task/durations.js';
import { discover, taskByName, type Constructor, type TaskDefinition } from '../task/registry.js';

/**
 * The service objects a worker runs tasks on: instances given in `services` (each serves its
 * class and every base class that declares tasks), classes given there (built once, with
 * `resolve` or `new Class()`), and with `resolve` any registered class.
 */
export class ServiceDirectory {
  private readonly instances = new Map<object, object | Promise<object>>();
  private readonly classes = new Set<object>();
  /** The tasks of the classes given in services, by name. */
  private readonly named = new Map<string, TaskDefinition>();

  constructor(
    services: readonly object[],
    private readonly resolve: ((cls: Constructor) => object | Promise<object>) | undefined,
    private readonly workerId: string,
  ) {
    for (const service of services) this.add(service);
  }

  /**
   * The task a message's name stands for here: among the classes given in services first (two
   * classes of one name, e.g. in two namespaces, can share a process as long as no worker serves
   * both), then in the registry.
   */
  taskNamed(name: string): TaskDefinition | undefined {
    return this.named.get(name) ?? taskByName(name);
  }

  /** Whether this worker runs a task: its class is served here (an instance, a class in services, or resolve). */
  serves(def: TaskDefinition): boolean {
    return this.resolve !== undefined || this.instances.has(def.owner) || this.classes.has(def.owner);
  }

  /** The instance a task of `def` runs on; made (and kept) on first use. */
  instanceFor(def: TaskDefinition): object | Promise<object> {
    const known = this.instances.get(def.owner);
    if (known) return known;
    let made: object | Promise<object>;
    if (this.resolve) {
      const check = (instance: unknown): object => {
        if (typeof instance !== 'object' || instance === null) {
          throw new ConfigError(`resolve(${def.className}) returned ${describe(instance)}; it must return an instance of the class`);
        }
        return instance;
      };
      const value = this.resolve(def.owner);
      made = value instanceof Promise ? value.then(check) : check(value);
    } else if (this.classes.has(def.owner)) {
      made = new (def.owner as unknown as new () => object)();
    } else {
      throw new ConfigError(`worker ${this.workerId} has no instance of ${def.className} for task ${def.name}: add one to services, or pass resolve`);
    }
    this.instances.set(def.owner, made);
    // A failed resolve is not kept: the next task of the class tries again.
    if (made instanceof Promise) made.catch(() => this.instances.delete(def.owner));
    return made;
  }

  private add(service: object): void {
    if (typeof service === 'function') {
      this.name(discover(service as Constructor));
      this.classes.add(service);
      return;
    }
    if (typeof service !== 'object' || service === null) {
      throw new ConfigError(`services must hold instances or classes, got ${describe(service)}`);
    }
    for (let c: unknown = service.constructor; typeof c === 'function' && c !== Object; c = Object.getPrototypeOf(c)) {
      this.name(discover(c as Constructor));
      if (!this.instances.has(c)) this.instances.set(c, service);
    }
  }

  /** Records the tasks of a served class by name; two classes claiming one name is a ConfigError. */
  private name(defs: ReadonlyMap<string, TaskDefinition>): void {
    for (const def of defs.values()) {
      const other = this.named.get(def.name);
      if (other && other.owner !== def.owner) {
        throw new ConfigError(
          `task name '${def.name}' is claimed by two classes this worker serves, both named ${def.owner.name} (in two namespaces or modules?): ` +
            'give the tasks of one of them an explicit @Task({ name })',
        );
      }
      this.named.set(def.name, def);
    }
  }
}
