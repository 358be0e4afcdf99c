"""The model formats a model folder can hold: ``framework:`` in its ``config.yaml`` picks one.

Every loader takes the weights file (``best_model.pth``) and the folder's ``config.yaml`` as a
dict, and returns a ``torch.nn.Module`` that maps N x C x H x W float32 normalized input to
N x K x H x W logits (K = 1: sigmoid; K > 1: softmax, ``positive_class`` picked). The weights
file keeps the one name ``best_model.pth`` in every format, so the folder layout, the
experiment check and the run log are the same whatever the format:

- ``torchscript``: a TorchScript archive (``torch.jit.save``).
- ``deepseg-unet``: the built-in U-Net's ``state_dict`` (or a dict holding it under
  ``state_dict``); its shape keys (``base_channels``, ``depth``, ...) come from config.yaml.
- ``smp``: a checkpoint in the DARTS layout (darts-nextgen's ``darts_segmentation``):
  ``{"config": {"model_framework": "smp", "model": {...}, ...}, "statedict": {...}}``, or a
  Lightning checkpoint ``{"hyper_parameters": {"config": {...}}, "state_dict": {"model.…"}}``.
  ``config["model"]`` holds the keyword arguments of ``segmentation_models_pytorch.
  create_model`` (``arch``, ``encoder_name``, ``in_channels``, ``classes``, ...); the network
  is built with ``encoder_weights=None`` (nothing is downloaded) and the state dict loaded.
  Needs the optional extra: ``pip install 'deepseg[smp]'``.
- ``onnx``: the bytes of an ONNX model (e.g. ``cp model.onnx best_model.pth``) with one
  N x C x H x W float input; its first output is the logits. Run by onnxruntime on the CPU
  (``onnxruntime-gpu`` adds CUDA), behind a Module that converts the tensors. Fixed sizes in
  the graph (e.g. 256 x 256 px) are enforced with an error naming both sizes. Needs the
  optional extra: ``pip install 'deepseg[onnx]'``.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only,
never arbitrary pickled code.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..core.errors import DeepSegError, brief

Loader = Callable[[Path, dict[str, Any]], torch.nn.Module]


def _require(module: str, extra: str, weights: Path) -> ModuleType:
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeepSegError(
            f"{weights}: this model format needs {module}, which cannot be imported "
            f"({brief(exc)}); install it with pip install 'deepseg[{extra}]'"
        ) from exc


def _torch_load(weights: Path) -> Any:
    """A checkpoint of tensors and plain values; pickled code is refused."""
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        raise DeepSegError(
            f"{weights}: holds a pickled Python object ({found[1] if found else brief(exc)}) "
            f"that torch.load(weights_only=True) refuses; save only tensors, dicts, lists, "
            f"strings and numbers"
        ) from exc


def _load_torchscript(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    with warnings.catch_warnings():  # the user chose TorchScript; torch>=2.9 calls it deprecated
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated")
        return torch.jit.load(str(weights), map_location="cpu")


def _load_deepseg_unet(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    from .unet import build_unet

    network = build_unet(config)
    state = _torch_load(weights)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    network.load_state_dict(state)
    return network


def read_darts_checkpoint(weights: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``segmentation_models_pytorch.create_model`` arguments and the state dict of a
    DARTS-layout (or DARTS Lightning) checkpoint; ``encoder_weights`` is set to None."""
    checkpoint = _torch_load(weights)
    if isinstance(checkpoint, dict) and "statedict" in checkpoint:
        config, state = checkpoint.get("config"), checkpoint["statedict"]
    elif isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        hyper = checkpoint.get("hyper_parameters")
        config = hyper.get("config") if isinstance(hyper, dict) else None
        state = dict(checkpoint["state_dict"])
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "model.")
    else:
        got = type(checkpoint).__name__
        if isinstance(checkpoint, dict):
            got += " with keys " + ", ".join(map(str, list(checkpoint)[:4]))
            got += ", ..." if len(checkpoint) > 4 else ""
        raise DeepSegError(
            f"{weights}: expected a DARTS checkpoint {{'config': ..., 'statedict': ...}} "
            f"(or a Lightning one with 'hyper_parameters' and 'state_dict'), got a {got}"
        )
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise DeepSegError(f"{weights}: the checkpoint's config has no 'model' mapping")
    framework = config.get("model_framework", "smp")
    if framework != "smp":
        raise DeepSegError(
            f"{weights}: config.model_framework is {framework!r}; framework smp reads 'smp' only"
        )
    if "arch" not in config["model"]:
        raise DeepSegError(f"{weights}: config.model has no 'arch' (e.g. Unet)")
    return {**config["model"], "encoder_weights": None}, state


def _load_smp(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    arguments, state = read_darts_checkpoint(weights)
    smp = _require("segmentation_models_pytorch", "smp", weights)
    network = smp.create_model(**arguments)
    network.load_state_dict(state)
    return network


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session as a Module: N x C x H x W tensor in, logits tensor out (on the
    input's device). ``dims`` are the graph's input sizes, None where not fixed; a fixed batch
    size is served by splitting (and zero-padding) the batch."""

    def __init__(self, session: Any, source: Path) -> None:
        super().__init__()
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
            found = [(i.name, i.shape, i.type) for i in inputs]
            raise DeepSegError(
                f"{source}: expected an ONNX model with one N x C x H x W float input, got {found}"
            )
        self.session, self.source = session, source
        self.input, self.output = inputs[0].name, session.get_outputs()[0].name
        self.dims = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)

    @property
    def fixed_px(self) -> int | None:
        """The tile size (px) the graph requires, when it fixes a square one."""
        height, width = self.dims[2:]
        return height if height is not None and height == width else None

    def _check(self, shape: tuple[int, ...]) -> None:
        wrong = [i for i in (1, 2, 3) if self.dims[i] is not None and self.dims[i] != shape[i]]
        if wrong:
            takes = " x ".join("N" if d is None else str(d) for d in self.dims)
            fixes = ["input.bands"] if 1 in wrong else []
            fixes += [f"grid.tile_size: {self.dims[2]}"] if wrong != [1] else []
            raise DeepSegError(
                f"{self.source}: the ONNX model takes {takes} input, got "
                f"{' x '.join(map(str, shape))}; set {' and '.join(fixes)} to match it"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(tuple(x.shape))
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        step = self.dims[0] or len(batch)
        parts = []
        for start in range(0, len(batch), step):
            part = batch[start : start + step]
            real = len(part)
            if real < step:
                part = np.concatenate([part, np.zeros((step - real, *part.shape[1:]), part.dtype)])
            parts.append(self.session.run([self.output], {self.input: part})[0][:real])
        return torch.from_numpy(np.concatenate(parts)).to(x.device)


def _load_onnx(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    ort = _require("onnxruntime", "onnx", weights)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # torch's limit (OMP_NUM_THREADS)
    try:
        session = ort.InferenceSession(
            str(weights), options, providers=ort.get_available_providers()
        )
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors derive from Exception only
        raise DeepSegError(f"{weights}: ONNX Runtime cannot load it ({brief(exc)})") from exc
    return OnnxNetwork(session, weights)


FRAMEWORKS: dict[str, Loader] = {
    "torchscript": _load_torchscript,
    "deepseg-unet": _load_deepseg_unet,
    "smp": _load_smp,
    "onnx": _load_onnx,
}
