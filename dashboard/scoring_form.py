"""The Margins page's scoring form: settings for `dpo-engine score`, a Review → Compute step with a one-line
summary, the job's live progress, its last failure."""

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from dashboard.components import confirmed, escape_markdown
from dashboard.state import computed_margins_path, pairs_file
from dpo_engine import jobs, progress
from dpo_engine.errors import UserError
from dpo_engine.files import read_json
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.margins.table import meta_path


def score_job_for(out_path: Path) -> dict | None:
    """The newest `dpo-engine score` job writing ``out_path``, as `jobs.status` describes it."""
    return jobs.find("score", out=out_path)


EXTERNAL_LABELS = {
    "dataset": "the data's scores (score_chosen − score_rejected)",
    "builtin": "built-in stand-in reward head (MiniLM embeddings, cross-fitted)",
    "none": "none",
}
IMPLICIT_LABELS = {"crossfit": "cross-fitted: 2 warm-up proxies on disjoint folds (no pair scored in-sample)",
                   "warmup": "train a warm-up proxy on a random seed subset (DM step 1)",
                   "lossdiff-irm": "LossDiff and IRM (Zhang et al.): a proxy DPO-trained on a held-out validation "
                                   "split scores the rest",
                   "none": "none"}
PENDING_KEY = "pending_score"
# What makes two scoring jobs take comparable time per pair.
TIMING_SHAPE = ("external", "implicit", "model", "dtype", "device", "max_length", "batch_size", "seed_size")


@st.cache_resource
def gpu_count() -> int:
    """GPUs this machine shows, asked once per server (no torch import on a machine without an NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    import torch

    return torch.cuda.device_count()


def processes_input(column) -> int:
    """How many processes share the log-prob passes: offered beside the settings with several GPUs (one process
    each), as an advanced option on a CPU machine."""
    gpus = gpu_count()
    if gpus > 1:
        return column.number_input(f"Processes (one per GPU, {gpus} GPUs)", min_value=1, max_value=gpus, value=gpus,
                                   help="the policy and reference log-prob passes are split across them")
    with column.expander("Advanced"):
        return st.number_input("CPU processes", min_value=1, max_value=os.cpu_count() or 1, value=1,
                               help="the log-prob passes are split across this many processes; each uses its "
                               "share of the cores (OMP_NUM_THREADS); cross-fitted margins use one")


def compute_form(source, loaded, dataset_fp: str, has_scores: bool) -> None:
    """Settings for `dpo-engine score`; "Review margins job" shows what would start, "Compute margins" starts it."""
    with st.form("score", enter_to_submit=False):
        left, right = st.columns(2)
        external = left.selectbox("External margin", ["dataset", "builtin", "none"] if has_scores else ["builtin", "none"],
                                  format_func=EXTERNAL_LABELS.get)
        implicit = right.selectbox("Implicit margin", list(IMPLICIT_LABELS), format_func=IMPLICIT_LABELS.get)
        model = left.text_input("Base model", value="smollm2-135m-instruct", help="name, local directory or Hub id")
        seed_size = right.number_input("Warm-up seed subset (pairs, 0 = min(2000, 10 %))", min_value=0, value=0, step=50)
        dtype = left.selectbox(
            "Precision", ["auto", "fp32", "bf16"],
            help="auto: bf16 on a CUDA GPU, fp32 elsewhere (the resolved choice is written to the margins sidecar); "
            "bf16 is about twice as fast on CPUs with native bf16 (AVX-512 BF16), far slower on CPUs without it",
        )
        device = right.selectbox("Device", ["auto", "cuda", "cpu", "mps"])
        max_length = left.number_input("Max tokens (prompt + response)", min_value=64, value=512, step=64)
        batch_size = right.number_input("Pairs per scoring batch (0 = as many as the token budget holds)",
                                        min_value=0, value=0)
        num_processes = processes_input(left)
        if st.form_submit_button("Review margins job", type="primary"):
            config = ScoreConfig(
                pairs=pairs_file(source, loaded, dataset_fp), out=str(computed_margins_path(dataset_fp)),
                external=external, implicit=implicit, model=model, dtype=dtype, device=device,
                max_length=int(max_length), batch_size=int(batch_size) or None, seed_size=int(seed_size) or None,
                num_processes=int(num_processes),
            )
            try:
                config.validate()
            except UserError as error:
                st.error(str(error))
            else:
                st.session_state[PENDING_KEY] = asdict(config)
        st.caption("Starts one background job: external and implicit margins for every pair of this dataset, "
                   "with the settings above; its progress (pairs done, seconds per pair, ETA) shows here.")
    pending = st.session_state.get(PENDING_KEY)
    if pending:
        review_score(ScoreConfig(**pending), len(loaded.pairs))


def review_score(config: ScoreConfig, n_pairs: int) -> None:
    """The one-line summary of the pending job, then Compute margins / Cancel (an identical job started seconds
    ago is not started twice)."""
    if confirmed(PENDING_KEY, "Compute margins", "score", asdict(config),
                 f"**Will compute:** {score_summary(config, n_pairs)}"):
        jobs.start("score", config)
        st.rerun()


def score_summary(config: ScoreConfig, n_pairs: int) -> str:
    """One line: pairs, external and implicit sources, model, precision and device, and the expected time."""
    external = {"dataset": "the data's scores", "builtin": "stand-in reward head"}.get(config.external, config.external)
    implicit = {"warmup": "warm-up proxy (DM)", "crossfit": "cross-fitted warm-up proxies",
                "lossdiff-irm": "LossDiff and IRM (validation proxy)"}.get(config.implicit, config.implicit)
    return (f"{n_pairs:,} pairs · external: {external} · implicit: {implicit} · {config.model} · "
            f"{config.dtype} on {config.device} · max {config.max_length} tokens · {expected_score_time(config, n_pairs)}")


def expected_score_time(config: ScoreConfig, n_pairs: int) -> str:
    """"time ≈ …" from the newest completed scoring job with the same settings (seconds per pair as it took,
    from its job record and its margins table's pair count), else that the job's progress will tell."""
    wanted = asdict(config)
    for job_dir in jobs.list_jobs("score"):
        info = jobs.status(job_dir)
        options = info.get("options") or {}
        if info["state"] != "completed" or any(str(options.get(key)) != str(wanted[key]) for key in TIMING_SHAPE):
            continue
        finished = read_json(Path(job_dir) / "exit.json", {}).get("finished")
        scored = read_json(meta_path(options.get("out", "")), {}).get("n_pairs") if options.get("out") else None
        if finished and scored and info.get("created"):
            rate = (float(finished) - float(info["created"])) / int(scored)
            return f"time ≈ {progress.format_duration(rate * n_pairs)} (at {rate:.2g} s/pair, as an earlier job took)"
    return "time: the progress bar shows an ETA once the first pairs are scored"


@st.fragment(run_every=2)
def job_progress(out_path: Path) -> None:
    """Live progress of a running score job; reruns the whole page when it ends."""
    info = score_job_for(out_path)
    if info["state"] != "running":
        st.rerun(scope="app")
    estimate = progress.from_job_record(info["progress"], time.time())
    st.progress(estimate.fraction, text=f"Computing margins: {progress.describe(estimate, 'pair')}")
    if st.button("Stop", key="stop_score"):
        jobs.stop(info["dir"])
    with st.expander("Job log"):
        st.code(jobs.tail(info["dir"]) or "(no output yet)", language=None)


def score_job_panel(source, loaded, dataset_fp: str, has_scores: bool) -> None:
    """The running job's progress, the last job's failure, or the form that starts a new job."""
    out_path = computed_margins_path(dataset_fp)
    info = score_job_for(out_path)
    if info is not None and info["state"] == "running":
        job_progress(out_path)
        return
    if info is not None and info["state"] in ("failed", "stopped"):
        st.error(f"The last margin job {info['state']}: {escape_markdown(info['message'], keep_lines=True)}")
        with st.expander("Job log"):
            st.code(jobs.tail(info["dir"]) or "(no output)", language=None)
    compute_form(source, loaded, dataset_fp, has_scores)
