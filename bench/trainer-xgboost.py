# The XGBoost baseline of `npm run bench -- trainer`: trains hist trees on the benchmark's data
# (written by bench/trainer.ts as raw float32 / uint8 files) and prints one JSON line with its times
# and writes its holdout probabilities, so the benchmark computes both AUCs with the same code.
# usage: python3 trainer-xgboost.py DIR ROWS FEATURES HOLDOUT_ROWS TREES DEPTH LEARNING_RATE THREADS
import json
import sys
import time

import numpy as np
import xgboost as xgb

d, rows, features, holdout, trees, depth, eta, threads = sys.argv[1:]
rows, features, holdout, trees, depth, threads = map(int, (rows, features, holdout, trees, depth, threads))
x = np.fromfile(f"{d}/train-x.f32", dtype=np.float32).reshape(rows, features)
y = np.fromfile(f"{d}/train-y.u8", dtype=np.uint8).astype(np.float32)
xv = np.fromfile(f"{d}/holdout-x.f32", dtype=np.float32).reshape(holdout, features)
# The last feature is categorical in the benchmark; XGBoost gets it as a category too.
types = ["q"] * (features - 1) + ["c"]
params = {
    "objective": "binary:logistic",
    "tree_method": "hist",
    "nthread": threads,
    "max_depth": depth,
    "eta": float(eta),
    "max_bin": 256,
    "lambda": 1.0,
}
wall0, cpu0 = time.perf_counter(), time.process_time()
train = xgb.DMatrix(x, label=y, missing=np.nan, feature_types=types, enable_categorical=True, nthread=threads)
booster = xgb.train(params, train, num_boost_round=trees)
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
p = booster.predict(xgb.DMatrix(xv, missing=np.nan, feature_types=types, enable_categorical=True, nthread=threads))
p.astype(np.float64).tofile(f"{d}/holdout-p.f64")
print(json.dumps({"version": xgb.__version__, "wall_s": wall, "cpu_s": cpu}))
