"""Arena: N selectors at the same budget plus random at several seeds, one LoRA run each, evaluated on the same
prompts, one table and figure (docs/arena.md).

The arena is an engine process (`dpo-engine arena`, started as a detached job): it keeps going when the browser
closes, and starting it again resumes at the step where it stopped. This page builds an ArenaConfig, starts the
job, and reads the arena's files (`dpo_engine.arena`).
"""

import streamlit as st

from dashboard.components import job_state_line
from dpo_engine import jobs
from dpo_engine.arena import ArenaConfig, arena_results, arena_status, contestant_steps, list_arenas
from dpo_engine.arena.config import ArenaRequest
from dpo_engine.arena.figures import arena_figure, overlap_figure, source_mix_figure
from dpo_engine.arena.store import arena_config, arena_dir, write_config_yaml
from dpo_engine.errors import UserError

# Selectors offered by the form: label -> {name, rule, params}.
SELECTORS = {
    "DM-MUL (top)": {"name": "dm-mul", "rule": "top_k", "params": {"score": "dm_mul"}},
    "DM-ADD (top)": {"name": "dm-add", "rule": "top_k", "params": {"score": "dm_add"}},
    "External margin (top)": {"name": "external-top", "rule": "top_k", "params": {"score": "external_margin"}},
    "Smallest implicit gap": {"name": "smallest-gap", "rule": "smallest_gap", "params": {}},
    "Alignment potential": {"name": "alignment-potential", "rule": "alignment_potential", "params": {}},
    "Medium implicit margin": {"name": "medium-band", "rule": "medium_band", "params": {}},
}


def start_arena(values: dict) -> None:
    """Validate the config, write it where the arena reads it, and start ``dpo-engine arena`` as a job."""
    config = ArenaConfig.from_dict(values)
    config.validate()
    jobs.start("arena", ArenaRequest(config=str(write_config_yaml(config.to_dict()))))


def launch_form() -> None:
    defaults = ArenaConfig()
    with st.expander("Start an arena", expanded=not list_arenas()), st.form("start_arena"):
        left, middle, right = st.columns(3)
        name = left.text_input("Name", placeholder="uf-120")
        model = left.text_input("Base model", value=defaults.model)
        picked = left.multiselect("Selectors", list(SELECTORS), default=list(SELECTORS)[:1] + list(SELECTORS)[3:5])
        budget = middle.number_input("Budget (pairs each)", 1, 100000, defaults.budget)
        seeds = middle.text_input("Random seeds", value=", ".join(map(str, defaults.random_seeds)))
        eval_n = middle.number_input("Evaluation prompts", 1, 805, defaults.eval_n)
        max_steps = right.number_input("Training steps per run (-1 = one epoch)", -1, 100000, -1)
        device = right.selectbox("Device", ["auto", "cpu", "cuda", "mps"])
        if not st.form_submit_button("Start", type="primary"):
            return
    train = {**defaults.train, **({"max_steps": int(max_steps)} if max_steps > 0 else {})}
    values = {"name": name.strip(), "model": model.strip(), "budget": int(budget), "eval_n": int(eval_n),
              "device": device, "train": train, "selectors": [SELECTORS[label] for label in picked],
              "random_seeds": [seed.strip() for seed in seeds.split(",") if seed.strip()]}
    try:
        start_arena(values)
    except UserError as error:
        st.error(str(error))
        return
    st.rerun()


@st.fragment(run_every=3)
def arena_view(name: str) -> None:
    job_state_line(name, arena_status(name), lambda: start_arena(arena_config(name)), key=f"resume_{name}")
    st.dataframe(contestant_steps(name), hide_index=True)
    results = arena_results(name)
    if results is None:
        return
    table, overlap, mixes = results
    st.dataframe(table, hide_index=True)
    st.plotly_chart(arena_figure(table), key=f"arena_{name}")
    left, right = st.columns(2)
    left.plotly_chart(overlap_figure(overlap), key=f"overlap_{name}")
    right.plotly_chart(source_mix_figure(mixes), key=f"sources_{name}")
    st.caption(f"Report: {arena_dir(name) / 'report' / 'report.md'} (arena.html beside it opens offline).")


st.title("Arena")
st.caption("Every selector at the same budget, plus random at several seeds: one LoRA run each with the same "
           "settings, every run answering the same held-out prompts, judged against the base model. Each selector "
           "is compared with the mean of the random runs, prompt by prompt.")
launch_form()
arenas = list_arenas()
if not arenas:
    st.info("No arena yet: start one above, or run `dpo-engine arena CONFIG.yaml` (docs/arena.md).")
else:
    arena_view(st.selectbox("Arena", arenas))
