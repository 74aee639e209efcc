"""The run report a person reads after `ftc run`: report.md and a loss curve (loss.png).

Built only from run.json facts and metrics.jsonl, so it can be rebuilt for any finished
or interrupted run without the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftc.runtime.metrics import read_metrics


Series = list[tuple[str, str, list[tuple[int, float]]]]  # (label, matplotlib style, [(step, value)])


def plot_lines(path: Path, series: Series, *, ylabel: str, log_if_wide: bool = False, title: str = "",
               right: Series = (), right_label: str = "") -> bool:
    """A PNG of series over optimizer steps, `right` ones on a second y axis (the learning rate
    beside the loss); False (no file) when every left series is empty. `log_if_wide`: a log y
    axis when the first series spans more than 20x. The PNG's Title and Description text
    fields carry the title and the series' labels."""
    series = [(label, style, pts) for label, style, pts in series if pts]
    right = [(label, style, pts) for label, style, pts in right if pts]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a GPU box
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, style, pts in series:
        ax.plot(*zip(*pts), style, label=label, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    first = [v for _, v in series[0][2]]
    if log_if_wide and min(first) > 0 and max(first) / min(first) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        twin = ax.twinx()
        for label, style, pts in right:
            twin.plot(*zip(*pts), style, label=label, linewidth=1, color="tab:gray", alpha=0.8)
        twin.set_ylabel(right_label)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels)
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title, "Description": "; ".join(l for l, _, _ in [*series, *right])})
    plt.close(fig)
    return True


def plot_loss(metrics: list[dict], path: Path, *, title: str = "") -> bool:
    """loss.png: training loss per step, eval loss as points, the learning rate on the right axis.
    False when nothing to plot."""
    return plot_lines(path, [
        ("train loss", "-", [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]),
        ("eval loss", "o-", [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]),
    ], ylabel="loss", log_if_wide=True, title=title,
        right=[("learning rate", "--", [(m["step"], m["learning_rate"]) for m in metrics if m.get("learning_rate") is not None])],
        right_label="learning rate")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _memory_plan(plan: dict | None) -> str:
    if not plan or not plan.get("used"):
        return "-"
    used = plan["used"]
    return (f"gradient checkpointing {'on' if used['gradient_checkpointing'] else 'off'}, micro-batch "
            f"{used['per_device_train_batch_size']} x {used['gradient_accumulation_steps']} ({plan.get('reason', '')})")


def write_report(output_dir: Path, facts: dict, sections: list[str] = ()) -> Path:
    """report.md (+ loss.png) in output_dir from run.json-style `facts` and metrics.jsonl;
    `sections` (markdown, e.g. GRPO's rewards) go after the summary, before the settings."""
    output_dir = Path(output_dir)
    metrics = read_metrics(output_dir / "metrics.jsonl")
    name = facts.get("name") or output_dir.name
    has_plot = plot_loss(metrics, output_dir / "loss.png",
                         title=f"{name} ({str(facts.get('plan_hash') or '')[:12]}): loss and learning rate")
    train = facts.get("train", {})
    tokens = facts.get("tokens", {})
    model = facts.get("model", {})
    lines = [f"# ftc run report: {facts.get('name') or output_dir.name}", ""]
    if model.get("random_init"):
        lines += ["> **Random weights.** The base model was built from its config with random weights "
                  "(`model.init=random`): a pipeline check, not a useful model.", ""]
    if train.get("interrupted"):
        lines += [f"> **Interrupted** at step {train.get('global_step')} of {train.get('max_steps')}; "
                  "continue with `ftc run --resume`.", ""]
    rows = [
        ("plan hash", facts.get("plan_hash") or "-"),
        ("backend / method", f"{facts.get('backend')} / {facts.get('method')}"),
        ("model", f"{model.get('name')} ({model.get('dtype')}, {_fmt(model.get('num_parameters'))} params, "
                  f"{_fmt(model.get('trainable_parameters'))} trainable)"),
        ("device", facts.get("device")),
        ("steps", f"{train.get('global_step')} / {train.get('max_steps')} (epoch {_fmt(train.get('epoch'))})"),
        ("loss first -> last", f"{_fmt(train.get('first_loss'))} -> {_fmt(train.get('last_loss'))}"),
        ("eval loss / perplexity", f"{_fmt(facts.get('eval', {}).get('loss'))} / {_fmt(facts.get('eval', {}).get('perplexity'))}"),
        ("tokens (real / slots / trained)", f"{_fmt(tokens.get('real'))} / {_fmt(tokens.get('slots'))} / {_fmt(tokens.get('trained'))}"),
        ("padding efficiency", _fmt(tokens.get("padding_efficiency"))),
        ("throughput", f"{_fmt(facts.get('throughput_tokens_per_second'))} tokens/s"),
        ("peak memory", f"{_fmt(facts.get('peak_memory', {}).get('gib'))} GiB ({facts.get('peak_memory', {}).get('kind')})"),
        ("memory plan", _memory_plan(facts.get("memory_plan"))),
        ("wall time", f"{_fmt(facts.get('wall_time_s'))} s"),
        ("versions", ", ".join(f"{k} {v}" for k, v in facts.get("versions", {}).items())),
    ]
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if has_plot:
        lines += ["![loss](loss.png)", ""]
    lines += [section for section in sections if section]
    settings = facts.get("settings", {})
    if settings:
        lines += ["## Settings", "", "```json"]
        import json

        lines += [json.dumps(settings, indent=2, sort_keys=True), "```", ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def preference_section(output_dir: Path, facts: dict, metrics: list[dict], keys: dict[str, str]) -> str:
    """The preference section of report.md: what the rewards did, the eval accuracy and margin, rewards.png."""
    p, ev = facts.get("preference", {}), facts.get("eval") or {}
    rows = [f"| {name} | {_fmt(p.get(f'first_{name}'))} | {_fmt(p.get(f'last_{name}'))} |" for name in keys]
    lines = ["## Preference", "",
             f"{p.get('method')} through TRL's {p.get('trainer')}; reference: {p.get('reference')}; "
             f"settings {', '.join(f'{k} {v}' for k, v in sorted(p.get('settings', {}).items()))}.", "",
             "| metric (train) | first | last |", "|---|---|---|", *rows, ""]
    if ev:
        lines += [f"Eval: preference accuracy {_fmt(ev.get('accuracy'))}, mean margin {_fmt(ev.get('mean_margin'))} "
                  f"(chosen {_fmt(ev.get('mean_reward_chosen'))}, rejected {_fmt(ev.get('mean_reward_rejected'))}).", ""]
    series = [(label, style, [(m["step"], m[key]) for m in metrics if m.get(key) is not None])
              for label, style, key in [("chosen reward", "-", keys["chosen"]), ("rejected reward", "-", keys["rejected"]),
                                        ("margin", "--", keys["margin"]),
                                        *([("accuracy", ":", keys["accuracy"])] if "accuracy" in keys else []),
                                        *([("kl", ":", keys["kl"])] if "kl" in keys else [])]]
    if plot_lines(output_dir / "rewards.png", series, ylabel="implicit reward (train batches)"):
        lines += ["![rewards](rewards.png)", ""]
    return "\n".join(lines)
