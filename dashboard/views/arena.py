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
from dpo_engine.arena.store import arena_config, arena_dir, report_path, write_config_yaml
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

# The arena table as shown: the comparison first, then training dynamics and the subsets (run ids are in the
# contestants table above it). Units as in `dpo_engine.arena.stats`.
TABLE_COLUMNS = {
    "contestant": st.column_config.TextColumn("contestant"),
    "rule": st.column_config.TextColumn("rule"),
    "params": st.column_config.TextColumn("params", width="medium"),
    "win_rate": st.column_config.NumberColumn("win rate %", format="%.1f", help="Against the base model's answers"),
    "ci_low": st.column_config.NumberColumn("CI low", format="%.1f"),
    "ci_high": st.column_config.NumberColumn("CI high", format="%.1f"),
    "vs_random": st.column_config.NumberColumn("vs random (points)", format="%+.1f",
                                               help="Paired difference with the per-prompt mean of the random runs"),
    "vs_random_low": st.column_config.NumberColumn("low", format="%+.1f"),
    "vs_random_high": st.column_config.NumberColumn("high", format="%+.1f"),
    "vs_random_p": st.column_config.NumberColumn("p", format="%.3f", help="Two-sided sign-flip p"),
    "n": st.column_config.NumberColumn("prompts"),
    "final_loss": st.column_config.NumberColumn("loss", format="%.3f"),
    "reward_accuracy": st.column_config.NumberColumn("reward acc.", format="%.2f"),
    "reward_margin": st.column_config.NumberColumn("reward margin", format="%.3f"),
    "steps": st.column_config.NumberColumn("steps"),
    "subset_size": st.column_config.NumberColumn("pairs"),
    "chosen_chars": st.column_config.NumberColumn("chosen chars", format="%.0f"),
    "rejected_chars": st.column_config.NumberColumn("rejected chars", format="%.0f"),
    "chosen_tokens": st.column_config.NumberColumn("chosen tokens", format="%.0f"),
    "rejected_tokens": st.column_config.NumberColumn("rejected tokens", format="%.0f"),
    "top_source": st.column_config.TextColumn("top source"),
    "top_source_share": st.column_config.NumberColumn("its share", format="percent"),
}


def report_downloads(name: str) -> None:
    """The exported report (report.md and the offline arena.html), once the report step has written it."""
    path = report_path(arena_dir(name))
    if not path.is_file():
        return
    html = path.with_name("arena.html")
    buttons = st.container(horizontal=True)
    buttons.download_button("Report (.md)", path.read_text(encoding="utf-8"), file_name=f"arena-{name}.md",
                            mime="text/markdown", icon=":material/download:", key=f"report_md_{name}")
    if html.is_file():  # several MB (plotly.js inside): read only when clicked
        buttons.download_button("Figures (.html, offline)", html.read_bytes, file_name=f"arena-{name}.html",
                                mime="text/html", icon=":material/download:", key=f"report_html_{name}")
    st.caption(f"Also on disk: {path.parent} (report.md, arena.html and a PNG per figure when kaleido is installed).")


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


FINAL_STATES = ("completed", "failed", "interrupted")  # nothing changes on disk until the user resumes


def arena_view(name: str) -> None:
    if job_state_line(name, arena_status(name), lambda: start_arena(arena_config(name)), key=f"resume_{name}"):
        st.rerun()  # the whole page: a resumed arena is live again
    st.dataframe(contestant_steps(name), hide_index=True)
    results = arena_results(name)
    if results is None:
        return
    table, overlap, mixes = results
    st.subheader("Results")
    st.caption("Win rate: percent of the held-out prompts won against the base model's answer (a tie counts half), "
               "95 % bootstrap CI. vs random: each selector minus the mean of the random runs, prompt by prompt, in "
               "points, with its paired bootstrap 95 % CI and sign-flip p. Loss, reward accuracy and margin: each "
               "run's last logged step. The random rows have no vs random: they are the reference.")
    comparison = ["vs_random", "vs_random_low", "vs_random_high", "vs_random_p"]  # None for the random rows
    shown = table.fillna({"params": ""}).astype({column: "float64" for column in comparison if column in table})
    st.dataframe(shown, hide_index=True, column_order=list(TABLE_COLUMNS), column_config=TABLE_COLUMNS)
    st.plotly_chart(arena_figure(table), key=f"arena_{name}")
    st.subheader("Subsets")
    left, right = st.columns(2)
    left.plotly_chart(overlap_figure(overlap), key=f"overlap_{name}")
    # mix.json keeps its keys sorted: shown in the table's order, like the other two figures.
    ordered = {contestant: mixes[contestant] for contestant in table.contestant if contestant in mixes}
    right.plotly_chart(source_mix_figure(ordered), key=f"sources_{name}")
    st.subheader("Report")
    report_downloads(name)


st.title("Arena")
st.caption("Every selector at the same budget, plus random at several seeds: one LoRA run each with the same "
           "settings, every run answering the same held-out prompts, judged against the base model. Each selector "
           "is compared with the mean of the random runs, prompt by prompt.")
launch_form()
arenas = list_arenas()
if not arenas:
    st.info("No arena yet: start one above, or run `dpo-engine arena CONFIG.yaml` (docs/arena.md).")
else:
    name = st.selectbox("Arena", arenas)
    # Redrawn every 3 s while the arena may still change, and no longer once it has finished.
    live = arena_status(name).get("state") not in FINAL_STATES
    st.fragment(arena_view, run_every=3 if live else None)(name)
