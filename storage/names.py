"""Names of folders, files, groups and tables, in one place."""

ARTIFACTS_DIR = "artifacts"  # run_root/artifacts/<kind>/<identity>/
RUNS_DIR = "run-records"  # run_root/run-records/<run id>.json
LINEAGE_DIR = "lineage"  # run_root/lineage/<digest>.json
PREFECT_RESULTS_DIR = "prefect-results"  # Prefect's result/cache storage
PREFECT_KEYS_DIR = "prefect-locks"  # lock files; must differ from results

MANIFEST = "manifest.json"  # files, sizes, mtimes and sha256 of an artifact
META = "meta.json"  # step, parameters and input digests of an artifact
BUILD_INFO = "built"  # summary key in meta.json: {finished_at, seconds} of the build (not in the digest)
PARTIAL_SUFFIX = ".partial"  # an artifact being built (resumable)
BUILDS_LOG = "builds.jsonl"  # run_root/artifacts/builds.jsonl: one line per artifact build
LOCK_SUFFIX = ".lock"  # held by the one process building an artifact

# data artifact
POOL_FILE = "pool.jsonl"
VAL_FILE = "validation.jsonl"
DATA_REPORT = "report.json"

# warmup / finetune artifact
CHECKPOINTS_FILE = "checkpoints.json"
ADAPTER_DIR = "adapter"  # finetune artifact: the peft folder

# features artifact (Zarr v3): one group per (checkpoint, split)
FEATURES_STORE = "features.zarr"
FEATURES_ARRAY = "features"
NORMS_ARRAY = "norms"
CHUNKS_DONE_DIR = "chunks_done"
CHUNK_BUILDERS_DIR = "chunk_builders"  # who computed each chunk (host, pid, Dask worker); merged into meta.json
EXAMPLES_META = "examples.json"  # ids and token counts per split

# diagnostics artifact
PROJECTION_CANDIDATES = "candidates.parquet"  # per candidate k: each task's fidelity
PROJECTION_PLOT = "fidelity_by_k.png"
PROJECTION_SAMPLE = "fidelity_sample.npz"  # the fidelity sample's exact and projected task-mean influence per k

DIAGNOSTICS_PLOT = "influence_distributions.png"
DIAGNOSTICS_STATS = "task_stats.json"
DIAGNOSTICS_FIDELITY = "fidelity.parquet"  # per task: Spearman of projected vs exact influence

# influence artifact (DuckDB)
INFLUENCE_DB = "influence.duckdb"
T_TRAIN = "train_examples"
T_VAL = "val_examples"
T_CKPT = "checkpoints"
T_INFLUENCE = "influence"
T_COLSTATS = "column_stats"  # val_idx, mean, std (sample), constant, min, max: each validation column over the pool
T_TASKSTATS = "task_stats"  # per task: raw and z-scored moments, extremes and 99th percentiles

# selection artifact
SELECTION_PARQUET = "selection.parquet"
SUBSET_JSONL = "subset.jsonl"
SELECTION_SUMMARY = "summary.json"

# evaluation artifact
EVAL_ITEMS = "items.parquet"
EVAL_TABLE = "results.json"

# prune artifact: a model folder (config, safetensors, tokenizer)
MODEL_DIR = "model"

# degradation artifact: per pool row, the pruned model's divergence from the original
DEGRADATION_PARQUET = "degradation.parquet"
DEGRADATION_CHUNKS_DIR = "chunks"  # one .npy per finished block of rows (resume)
