"""The columns of every table a study writes (docs/design.md), in one place: the writers order their
tables by these lists and the readers (fits, checks, figures) check them."""

RUN_COLUMNS = [
    "run_id", "phase", "parent", "model", "n_params", "n_nonembed", "domain", "ratio", "pt_schedule",
    "cpt_schedule", "peak_lr", "cpt_peak_lr", "transfer_step", "loss_potential", "steps", "total_steps",
    "seed", "batch_size", "seq_len", "status", "wall_time_s", "tokens_per_s", "schedule_json",
    "cpt_schedule_json",
]  # fmt: skip
CURVE_COLUMNS = [
    "run_id", "phase", "step", "cpt_step", "tokens", "lr", "split", "loss",
    "S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt",
]  # fmt: skip
LR_COLUMNS = ["run_id", "step", "lr"]
# predictions: in-sample ones of the study fits (fits/<analysis>_predictions.parquet) and the held-out ones
PRED_COLUMNS = ["run_id", "step", "split", "loss", "pred", "pred_lo", "pred_hi"]
CHECK_PRED_COLUMNS = ["check", *PRED_COLUMNS]
CHECK_COLUMNS = [
    "check", "kind", "law", "model", "domain", "cpt_peak_lr", "split", "run_id", "n_fit_runs", "n_points",
    "mae", "rmse", "r2", "mean_rel", "worst_rel", "huber", "metric", "value", "threshold", "passed", "note",
]  # fmt: skip
METRICS = ("mae", "rmse", "r2", "mean_rel", "worst_rel", "huber")
