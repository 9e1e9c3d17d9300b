// The trainer's public surface: the model (gbdt), its ONNX export, evaluation, datasets, one
// training cycle with the promotion policy, and the schedule that `streamserve train` and `up` run.
export {
  trainGbdt,
  predictProba,
  predictProbaColumns,
  predictMargin,
  resolveGbdtOptions,
  GBDT_DEFAULTS,
  type GbdtData,
  type GbdtModel,
  type GbdtOptions,
  type GbdtProgress,
  type GbdtTree,
} from "./gbdt.js";
export { exportOnnx, ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME, ONNX_LABEL_NAME, type OnnxExportOptions } from "./onnx-export.js";
export { auc, logLoss, calibration, evaluate, splitTrainValid, type Evaluation, type QuantileCalibrationBin } from "./metrics.js";
export { loadLoggedDataset, loadFileDataset, countPredictionsSince, DatasetError, type Dataset, type FileDataset } from "./dataset.js";
export {
  runTrainingCycle,
  decidePromotion,
  scoreOnnx,
  PROMOTION_DEFAULTS,
  CYCLE_DEFAULTS,
  type CycleOptions,
  type CycleReport,
  type Decision,
  type PromotionPolicy,
} from "./cycle.js";
export { startTrainingSchedule, SCHEDULE_DEFAULTS, type ScheduleOptions, type TrainingSchedule, type SkippedRun } from "./schedule.js";
export { trainInWorker } from "./train-worker.js";
export { acquireCycleLock, isHeld, lockBucket, type CycleLock, type LockHolder } from "./cycle-lock.js";
