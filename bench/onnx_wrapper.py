"""The cost of running an ONNX model through DeepSeg: tiles/s of ``load_model``'s network
(the ONNX Runtime session behind a torch Module) over tiles/s of the bare session, same
tiles, same process. A ratio near 1 means the tensor conversions cost nothing that matters.

Model: ukis-csmask's 4-band L2A cloud U-Net (EfficientNet-b4 encoder, 256 x 256 px, 3 classes;
``pip install -e '.[realmodel]'``). Usage: ``python bench/onnx_wrapper.py [--batch 8 --rounds 7]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import yaml

from deepseg.model.loading import load_model


def ukis_folder(folder: Path) -> Path:
    """A DeepSeg model folder around ukis-csmask's ONNX file (linked, not copied)."""
    spec = importlib.util.find_spec("ukis_csmask")
    if spec is None:
        raise SystemExit("ukis-csmask is not installed: pip install -e '.[realmodel]'")
    package = Path(spec.submodule_search_locations[0])
    card = json.loads((package / "model_4b_l2a.json").read_text())
    mean, std = card["data"]["dataset_statistics"]["img"]
    (folder / "best_model.pth").symlink_to(package / "model_4b_l2a.onnx")
    (folder / "normalization_stats.json").write_text(json.dumps({"mean": mean, "std": std}))
    config = {"framework": "onnx", "threshold": 0.5, "classes": 3, "positive_class": 1}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def timed(run) -> float:
    """Seconds one call of ``run`` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="tiles per call")
    parser.add_argument("--rounds", type=int, default=7, help="timed call pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(ukis_folder(Path(tmp)), bands=4, device="cpu", tile_size=256)
        batch = torch.randn(args.batch, 4, 256, 256, generator=torch.Generator().manual_seed(0))
        session = model.network.session
        array = batch.numpy()

        def wrapped() -> None:
            with torch.inference_mode():
                model.network(batch)

        def bare() -> None:
            session.run(None, {"input": array})

        bare()
        wrapped()  # warm-up
        # alternate the two so that load from other processes hits both alike
        pairs = [(timed(bare), timed(wrapped)) for _ in range(args.rounds)]
    direct, through = (args.batch / np.median([p[i] for p in pairs]) for i in (0, 1))
    ratio = np.median([b / w for b, w in pairs])
    print(f"onnxruntime {onnxruntime.__version__}, {args.batch} tiles of 4 x 256 x 256 per call")
    print(f"bare session:     {direct:8.2f} tiles/s (median of {args.rounds})")
    print(f"through DeepSeg:  {through:8.2f} tiles/s")
    print(f"ratio:            {ratio:8.3f} (median of the paired calls' ratios)")


if __name__ == "__main__":
    main()
