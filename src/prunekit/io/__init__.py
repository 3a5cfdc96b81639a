"""Save and load pruned models as plan JSON plus weights, never pickled code.

A saved model is a folder:

- ``plan.json``: the plan, with the graph options and example input shapes used
  to build it;
- ``weights.safetensors`` (when safetensors is installed) or ``weights.pt``
  (a plain state_dict, loaded with ``torch.load(weights_only=True)``).

Loading rebuilds the original architecture (the caller passes a fresh instance),
redoes the structural edits the plan names (:mod:`.edits`; LAPP's bypass), replays the
plan through the engine and loads the weights strictly.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import PlanFormatError, WeightsMismatchError
from ..graph import ChannelGraph
from ..outputs import save_safetensors, save_torch, staged_folder, write_bytes, write_text
from ..plan import Plan
from .edits import apply_edits, edits_of, register_edit

__all__ = ["save_pruned", "load_pruned", "export_onnx", "register_edit"]


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def save_pruned(path: str | os.PathLike[str], model: nn.Module, plan: Plan,
                example_inputs: Any, ignore: Sequence[str] = (),
                graph_options: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``path/`` atomically: it either appears complete or not at all.

    ``example_inputs``: a tensor, a tuple, or a dict of keyword arguments (their shapes,
    dtypes and non-tensor values are stored so loading can rebuild the graph).
    ``graph_options``: ``ChannelGraph.build`` options to replay (``freeze_normalised``,
    ``protect_outputs``, ``capture``). ``overwrite=False`` refuses to replace an existing
    non-empty folder (:class:`prunekit.outputs.OutputError`)."""
    options = {k: v for k, v in (graph_options or {}).items()
               if k in ("freeze_normalised", "protect_outputs", "capture")}
    doc = plan.to_dict()
    doc["graph"] = {"ignore": list(ignore), **_input_spec(example_inputs), **options}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with staged_folder(path, overwrite=overwrite) as tmp:
        write_text(tmp / "plan.json", json.dumps(doc, indent=1))
        if _has_safetensors():
            save_safetensors(state, tmp / "weights.safetensors")
        else:
            save_torch(state, tmp / "weights.pt")
    return Path(path)


def load_pruned(path: str | os.PathLike[str], base_model: nn.Module,
                example_inputs: Sequence[torch.Tensor] | None = None) -> tuple[nn.Module, Plan]:
    """Replay the saved plan on ``base_model`` (a fresh unpruned instance, changed in place
    by the structural edits the plan names) and load weights."""
    path = Path(path)
    plan_file = path / "plan.json"
    if not plan_file.is_file():
        raise PlanFormatError(f"{path} is not a saved prunekit model (no plan.json)")
    try:
        doc = json.loads(plan_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanFormatError(f"cannot read {plan_file}: {exc}") from exc
    try:
        plan = Plan.from_dict(doc)
        opts = doc.get("graph", {}) if isinstance(doc, dict) else {}
        if not isinstance(opts, dict):
            raise PlanFormatError(f"\"graph\" must be an object, got {opts!r}")
        if example_inputs is None:
            example_inputs = _inputs_of(opts)
        edits = edits_of(plan.meta)
        apply_edits(base_model, edits)
    except PlanFormatError as exc:
        raise PlanFormatError(f"{plan_file}: {exc}") from None
    graph = ChannelGraph.build(base_model, example_inputs, ignore=tuple(opts.get("ignore", ())),
                               **{k: opts[k] for k in ("freeze_normalised", "protect_outputs",
                                                       "capture") if k in opts})
    model = graph.apply(base_model, plan)
    state = _read_weights(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        raise WeightsMismatchError(
            f"weights in {path} do not match the plan's architecture: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(state, strict=True)
    return model, plan


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    st, pt = path / "weights.safetensors", path / "weights.pt"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            return load_file(str(st))
        if pt.is_file():
            from ..inputs import torch_load
            state = torch_load(pt, "weights file")
            if not isinstance(state, dict):
                raise WeightsMismatchError(f"{pt} does not hold a state_dict")
            return state
    except WeightsMismatchError:
        raise
    except Exception as exc:
        raise WeightsMismatchError(f"cannot read weights in {path}: {exc}") from exc
    raise WeightsMismatchError(f"no weights.safetensors or weights.pt in {path}")


def _spec(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"value": v}
    raise PlanFormatError(f"cannot save an example input of type {type(v).__name__}; pass "
                          "tensors (and plain bool/int/float/str keyword values)")


def _input_spec(example_inputs: Any) -> dict:
    if isinstance(example_inputs, dict):
        return {"input_kwargs": {k: _spec(v) for k, v in example_inputs.items()}}
    return {"input_shapes": [list(x.shape) for x in _as_tuple(example_inputs)]}


def _shape(spec: Any, what: str) -> list[int]:
    if not isinstance(spec, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                             and d >= 0 for d in spec):
        raise PlanFormatError(f"the shape of {what} must be a list of sizes >= 0, "
                              f"got {spec!r}; save the model again with save_pruned")
    return spec


def _value(spec: Any, what: str) -> Any:
    if not isinstance(spec, dict):
        raise PlanFormatError(f"{what} must be an object, got {spec!r}")
    if "value" in spec:
        return spec["value"]
    dtype = getattr(torch, str(spec.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise PlanFormatError(f"{what} has an unknown dtype {spec.get('dtype')!r}")
    # token ids and masks of ones are valid inputs; zeros would mask every token
    fill = torch.zeros if dtype.is_floating_point else torch.ones
    return fill(_shape(spec.get("shape"), what), dtype=dtype)


def _inputs_of(opts: dict) -> Any:
    """The example inputs a saved plan was built with, checked (a hand-edited or corrupt
    plan.json fails here with the field named, not inside torch)."""
    if "input_kwargs" in opts:
        kw = opts["input_kwargs"]
        if not isinstance(kw, dict):
            raise PlanFormatError("\"input_kwargs\" must be an object")
        return {k: _value(v, f"input {k!r}") for k, v in kw.items()}
    shapes = opts.get("input_shapes", [])
    if not isinstance(shapes, list):
        raise PlanFormatError("\"input_shapes\" must be a list of shapes")
    return tuple(torch.zeros(_shape(s, f"input {i}")) for i, s in enumerate(shapes))


def _as_tuple(x: Any) -> tuple:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor,
                path: str | os.PathLike[str], check: bool = True, opset: int = 18) -> float:
    """Export to ONNX (atomically); with ``check``, run onnxruntime and return the max
    abs difference from PyTorch's output."""
    inputs = _as_tuple(example_inputs)
    model = model.eval()
    names = [f"input{i}" for i in range(len(inputs))]
    buf = io.BytesIO()     # exported in memory: the file is written once, atomically
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buf, input_names=names, opset_version=opset,
                          dynamo=False)
    data = buf.getvalue()
    err = _check_onnx(model, inputs, data, names) if check else 0.0
    write_bytes(path, data)
    return err


def _check_onnx(model: nn.Module, inputs: tuple, data: bytes, names: list[str]) -> float:
    import numpy as np
    import onnxruntime as ort
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    with torch.no_grad():
        ref = model(*inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    return max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
