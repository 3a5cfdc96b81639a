"""Named conformance checks of a method on an architecture (``check_estimator``-style).

A :class:`Case` runs one registered method on one architecture of the conformance
set (at its ``test_config``, target 0.5) once, and every check reads that run:

- ``runs``: the method runs; only a method that needs labels may refuse a model that
  is not a classifier, up front and saying why (then the checks that read the run
  report the refusal and pass nothing);
- ``plan_equivalent``: the plan is valid for the graph and the pruned model of the
  plan computes what the masked reference computes;
- ``target_met``: the cost kept, in the config's metric, is within 1% of the target
  (1 point of the original cost) and never above target * 1.01;
- ``output_ok``: the pruned model runs on the example and returns the original's
  structure, shapes and finite values;
- ``input_untouched``: the model given to the method is unchanged;
- ``deterministic``: a second run with the same seed gives the same plan;
- ``config_round_trip``: the config survives to/from dict and JSON;
- ``result_save_load``: the result saved and loaded gives the same plan and outputs;
- ``missing_data_refused``: a context without the data the method needs is refused
  before any work, naming what is missing.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, Callable

import torch

from ..conformance import ConformanceError, check_plan, outputs_close
from ..errors import PrunekitError, TargetError
from ..graph import ChannelGraph
from ..graph.verify import flat_outputs
from ..methods.allocate import metric_value
from ..methods.protocol import Context, Method, get_method, prune
from .architectures import Architecture


class Refused(Exception):
    """The method refused the architecture (up front, with a message): not a failure of
    the check that meets it, and not a pass either."""


class Case:
    """One method on one architecture; the run happens once, on first use."""

    def __init__(self, method: Method | str, arch: Architecture, target: float = 0.5) -> None:
        self.method = get_method(method) if isinstance(method, str) else method
        self.arch, self.target = arch, target
        self._run: Any = None

    def config(self):
        return self.method.test_config(target=self.target)

    def fresh(self) -> tuple[torch.nn.Module, Context]:
        return self.arch.model(), self.arch.context()

    def execute(self) -> Any:
        model, ctx = self.fresh()
        return prune(model, self.config(), ctx)

    @property
    def run(self) -> dict[str, Any]:
        if self._run is None:
            model, ctx = self.fresh()
            state = copy.deepcopy(model.state_dict())
            try:
                result = prune(model, self.config(), ctx)
                self._run = {"model": model, "context": ctx, "state": state, "result": result}
            except PrunekitError as exc:
                self._run = {"refused": exc}
        return self._run

    def result(self) -> Any:
        run = self.run
        if "refused" in run:
            raise Refused(f"{self.method.name} refuses {self.arch.name}: {run['refused']}")
        return run["result"]


def _fail(case: Case, what: str) -> None:
    raise ConformanceError(f"{case.method.name} on {case.arch.name}: {what}")


# ------------------------------------------------------------------ the checks
def may_refuse(case: Case) -> bool:
    """The one refusal the conformance set expects: a method that trains or scores by
    labels (needs "train" or "labelled") on a model that is not a classifier."""
    return not case.arch.classifier and bool({"train", "labelled"} & set(case.method.needs))


def check_runs(case: Case) -> None:
    run = case.run
    if "refused" in run:
        msg = str(run["refused"])
        if not may_refuse(case):
            _fail(case, f"refused an architecture it must prune: {msg}")
        if len(msg) < 20:
            _fail(case, f"refused without saying why: {msg!r}")
        return
    if run["result"].plan is None or run["result"].model is None:
        _fail(case, "the result has no plan or no model")


def check_plan_equivalent(case: Case) -> None:
    result = case.result()
    model, ctx = case.run["model"], case.run["context"]
    graph = ChannelGraph.build(model, ctx.inputs, ignore=case.config().ignore)
    try:      # on the original's own graph (a method's graph may hold trained weights)
        check_plan(model, ctx.inputs, graph, result.plan)
    except AssertionError as exc:
        _fail(case, f"the plan's pruned model differs from the masked reference: {exc}")


def check_target_met(case: Case) -> None:
    result, cfg = case.result(), case.config()
    before = metric_value(result.before, cfg.metric)
    after = metric_value(result.after, cfg.metric)
    kept = after / before
    if kept > cfg.target * 1.01 or abs(kept - cfg.target) > 0.01:
        _fail(case, f"keeps {kept:.4f} of the {cfg.metric}, target {cfg.target}")


def check_output_ok(case: Case) -> None:
    result, model, ctx = case.result(), case.run["model"], case.run["context"]
    with torch.no_grad():
        want = flat_outputs(model.eval()(*ctx.inputs))
        got = flat_outputs(result.model.eval()(*ctx.inputs))
    if [tuple(t.shape) for t in got] != [tuple(t.shape) for t in want]:
        _fail(case, f"output shapes {[tuple(t.shape) for t in got]}, the original's "
                    f"{[tuple(t.shape) for t in want]}")
    if not all(bool(torch.isfinite(t).all()) for t in got if t.is_floating_point()):
        _fail(case, "the pruned model's output is not finite")


def check_input_untouched(case: Case) -> None:
    case.result()
    now = case.run["model"].state_dict()
    before = case.run["state"]
    if set(now) != set(before) or any(not torch.equal(now[k], before[k]) for k in before):
        _fail(case, "the method changed the model it was given")


def check_deterministic(case: Case) -> None:
    first = case.result().plan
    again = case.execute().plan
    if again.keep != first.keep:
        _fail(case, "a second run with the same seed kept other channels")


def check_config_round_trip(case: Case) -> None:
    cfg = case.config()
    kind = type(cfg)
    if kind.from_dict(cfg.to_dict()) != cfg or kind.from_json(cfg.to_json()) != cfg:
        _fail(case, "the config does not survive to_dict/from_dict or JSON")
    try:
        kind.from_dict({**cfg.to_dict(), "no_such_option": 1})
    except TargetError:
        pass
    else:
        _fail(case, "from_dict accepted an unknown key")


def check_result_save_load(case: Case) -> None:
    from ..methods.base import Result
    result, ctx = case.result(), case.run["context"]
    with tempfile.TemporaryDirectory(prefix="prunekit-conformance-") as tmp:
        result.save(f"{tmp}/run", ctx.example)
        loaded = Result.load(f"{tmp}/run", case.arch.model(), ctx.example)
    if loaded.plan.keep != result.plan.keep or len(loaded.front) != len(result.front):
        _fail(case, "the loaded result has another plan or front")
    with torch.no_grad():
        try:
            outputs_close(result.model.eval()(*ctx.inputs), loaded.model.eval()(*ctx.inputs))
        except AssertionError as exc:
            _fail(case, f"the loaded model computes something else: {exc}")


def check_missing_data_refused(case: Case) -> None:
    if not case.method.needs:
        return      # needs nothing: nothing can be missing
    model = case.arch.model()
    try:
        prune(model, case.config(), Context(example=case.arch.example()))
    except TargetError as exc:
        if "needs" not in str(exc):
            _fail(case, f"refused a context without data, but without saying what: {exc}")
        return
    _fail(case, f"ran without the data it needs ({sorted(case.method.needs)})")


CHECKS: dict[str, Callable[[Case], None]] = {
    "runs": check_runs, "plan_equivalent": check_plan_equivalent,
    "target_met": check_target_met, "output_ok": check_output_ok,
    "input_untouched": check_input_untouched, "deterministic": check_deterministic,
    "config_round_trip": check_config_round_trip, "result_save_load": check_result_save_load,
    "missing_data_refused": check_missing_data_refused,
}
# the checks that read the run (on a refusal they report it instead)
NEED_RUN = ("plan_equivalent", "target_met", "output_ok", "input_untouched", "deterministic",
            "result_save_load")


def check_method(method: Method | str, arch: Architecture,
                 checks: list[str] | None = None) -> dict[str, str]:
    """Run the named checks (default: all) of ``method`` on ``arch``: per check "ok" or
    "refused: <why>" (the method refused the architecture up front); a failed check
    raises :class:`~prunekit.conformance.ConformanceError` naming it."""
    case = Case(method, arch)
    out = {}
    for name in checks or list(CHECKS):
        try:
            CHECKS[name](case)
            out[name] = "ok"
        except Refused as exc:
            out[name] = f"refused: {exc}"
    return out
