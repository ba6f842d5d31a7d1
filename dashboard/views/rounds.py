"""Rounds: iterative DPO loops (generate -> score -> select -> train, each round a directory), two side by side.

A loop is an engine process (`dpo-engine rounds`, started as a detached job): it keeps going when the browser
closes, and starting it again resumes at the step where it stopped. This page only writes a config, starts the
job, and reads the loop's files (`dpo_engine.rounds`).
"""

import streamlit as st

from dashboard.components import job_state_line
from dashboard.figures import margin_scatter, training_curves
from dashboard.rounds_figures import win_rate_by_round
from dpo_engine import jobs
from dpo_engine.errors import UserError
from dpo_engine.rounds import RoundsConfig, list_loops, loop_status, round_margins, round_summary
from dpo_engine.rounds.store import loop_config, write_config_yaml
from dpo_engine.runs import read_metrics

PRESETS = {
    "DM-MUL, top 25 %": {"selection_rule": "top_k", "selection_params": {"score": "dm_mul", "frac": 0.25}},
    # With the stand-in scorer's small margins DM-MUL ties on every pair (docs/rounds.md): DM-ADD still ranks them.
    "DM-ADD, top 25 %": {"selection_rule": "top_k", "selection_params": {"score": "dm_add", "frac": 0.25}},
    "All online pairs (baseline)": {"selection_rule": "all", "selection_params": {}},
}


def selection_text(config: dict) -> str:
    """How a loop's config selects each round's pairs, in a few words."""
    rule, params = config.get("selection_rule"), config.get("selection_params") or {}
    if rule == "all":
        return "every online pair"
    if rule == "top_k" and {"score", "frac"} <= set(params):
        return f"top {params['frac']:.0%} by {params['score']}"
    return f"{rule} {params}" if params else str(rule)


def start_loop(values: dict) -> None:
    """Validate the config, write it where the loop reads it, and start ``dpo-engine rounds`` as a job."""
    config = RoundsConfig.from_dict(values)
    config.validate()
    jobs.start("rounds", ["rounds", str(write_config_yaml(config.to_dict()))])


def launch_form() -> None:
    defaults = RoundsConfig()
    with st.expander("Start a loop", expanded=not list_loops()), st.form("start_loop"):
        left, middle, right = st.columns(3)
        name = left.text_input("Name", placeholder="dm25-smollm")
        model = left.text_input("Base model", value=defaults.model)
        preset = left.radio("Selection", list(PRESETS))
        rounds = middle.number_input("Rounds", 1, 20, defaults.rounds)
        prompts = middle.number_input("Prompts per round", 2, 5000, defaults.prompts_per_round)
        samples = middle.number_input("Answers per prompt (K)", 2, 16, defaults.samples_per_prompt)
        mode = right.selectbox("Adapter", ["stack", "fresh"], help=RoundsConfig.__dataclass_fields__[
            "adapter_mode"].metadata["help"])
        max_steps = right.number_input("Training steps per round (-1 = one epoch)", -1, 100000, -1)
        device = right.selectbox("Device", ["auto", "cpu", "cuda", "mps"])
        if not st.form_submit_button("Start", type="primary"):
            return
    train = {**defaults.train, **({"max_steps": int(max_steps)} if max_steps > 0 else {})}
    values = {"name": name.strip(), "model": model.strip(), "rounds": int(rounds), "prompts_per_round": int(prompts),
              "samples_per_prompt": int(samples), "adapter_mode": mode, "device": device, "train": train,
              **PRESETS[preset]}
    try:
        start_loop(values)
    except UserError as error:
        st.error(str(error))
        return
    st.rerun()


def loop_header(name: str) -> None:
    config = loop_config(name)
    if job_state_line(name, loop_status(name), lambda: start_loop(config), key=f"resume_{name}"):
        st.rerun()
    st.caption(f"Selection: {selection_text(config)} · {config.get('prompts_per_round', '?')} prompts × "
               f"K = {config.get('samples_per_prompt', '?')} per round · adapter {config.get('adapter_mode', '?')}")


@st.fragment(run_every=3)
def comparison(names: list[str]) -> None:
    summaries = {name: round_summary(name) for name in names}
    st.plotly_chart(win_rate_by_round(summaries), key="win_rates")
    columns = st.columns(len(names))
    for column, name in zip(columns, names):
        with column:
            loop_header(name)
            st.dataframe(summaries[name].drop(columns=["margins_from"]), hide_index=True)
    numbers = sorted({int(n) for summary in summaries.values() for n in summary["round"]})
    if not numbers:
        return
    number = st.select_slider("Round", numbers, value=numbers[-1]) if len(numbers) > 1 else numbers[0]
    for column, name in zip(st.columns(len(names)), names):
        with column:
            round_details(name, number)


def round_details(name: str, number: int) -> None:
    table = round_margins(name, number)
    if table is None:
        st.caption(f"{name}, round {number}: no selection yet.")
        return
    st.caption(f"{name}, round {number}: {int(table.selected.sum())} of {len(table)} pairs selected")
    st.plotly_chart(margin_scatter(table, None, selected=table.selected.to_numpy()),
                    key=f"margins_{name}_{number}")
    run_id = round_summary(name).set_index("round").run_id.get(number)
    if run_id:
        try:
            metrics = read_metrics(run_id)
        except UserError:
            return
        if not metrics.empty:
            st.plotly_chart(training_curves({run_id: metrics}), key=f"curves_{name}_{number}")


st.title("Rounds")
st.caption("Iterative DPO as in *Less is More* §3.2: each round the current policy answers K times per prompt, a "
           "reward model scores the answers, best-vs-worst pairs are built, the policy's implicit margins are "
           "measured, a rule keeps some of the pairs (DM-MUL's top 25 % in the paper) or all of them, and the next "
           "policy is trained. Win rates are against the "
           "base model on held-out prompts, judged by the offline stand-in judge.")
launch_form()
loops = list_loops()
if not loops:
    st.info("No loop yet: start one above, or run `dpo-engine rounds CONFIG.yaml` (docs/rounds.md).")
else:
    picked = st.multiselect("Compare loops", loops, default=loops[:2], max_selections=2)
    if picked:
        comparison(picked)
