"""Render a grid of PartsWorld examples with their part masks: ``python -m jinterp.data.show --out x.png``.

Generates the examples in memory (no tfds build needed), from the test split of the chosen config.
"""

import argparse

import numpy as np

from jinterp.data import parts_world as pw
from jinterp.data.loader import parts_world_config


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="parts_world.png", help="PNG path")
    ap.add_argument("--name", default="parts_world", help="parts_world[/<config>] or parts_world_binary")
    ap.add_argument("--image_size", type=int, default=None)
    ap.add_argument("--num_classes", type=int, default=None)
    ap.add_argument("--num", type=int, default=16, help="examples shown")
    ap.add_argument("--ncols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="generation seed")
    args = ap.parse_args(argv)
    from jinterp import viz  # matplotlib only when drawing

    cfg = parts_world_config(
        args.name, image_size=args.image_size, num_classes=args.num_classes, data_seed=args.seed
    )
    cfg = pw.make_config(
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
        binary=cfg.binary,
        train_size=1,
        test_size=max(args.num, 1),
        seed=cfg.seed,
    )
    batch = pw.generate(cfg, "test")
    # Show classes in label order so fine-grained neighbours (one part apart) sit side by side.
    order = np.argsort(batch["label"], kind="stable")
    batch = {k: v[order] for k, v in batch.items()}
    names = [c["name"] for c in pw.parts_world_classes(cfg)]
    path = viz.save_examples_grid(batch, args.out, class_names=names, num=args.num, ncols=args.ncols)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
