// The clickstream simulator: a site with a hidden truth (`World`), its sessions (`Clickstream`)
// and the running simulation that publishes events and calls the recommender (`startSimulation`).
export {
  startSimulation,
  SIMULATION_DEFAULTS,
  type Simulation,
  type SimulationContext,
  type SimulationCounters,
  type SimulationOptions,
  type SimulationProgress,
} from "./simulation.js";
export { World, WORLD_DEFAULTS, TRUTH, DEVICES, type Device, type SimPage, type SimUser, type WorldOptions } from "./world.js";
export { Clickstream, type ClickstreamOptions, type Session, type SimEvent } from "./clickstream.js";
export { createRandom, cumulative, type Random } from "./random.js";
