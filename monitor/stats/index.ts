// The monitor's statistics: pure functions of numbers, no I/O.
export * from "./special-functions.js";
export * from "./sample.js";
export * from "./distribution-tests.js";
export * from "./ab-tests.js";
export * from "./classification.js";
export * from "./sequential.js";
export * from "./cuped.js";
