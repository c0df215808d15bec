"""How closely a warm-started clone follows its teacher's labels, and where the teacher leaves
a reference policy.

Reads a training run's labelled states (``RUN/demos.npz``, written by every run with
``--bc-policy``) and its clone (``RUN/policy.pt``), and for each state takes each actor's
greedy option (one chain pass, its noise seeded). Prints how often the teacher's label differs
from the reference's option (by default the shipped ``eat-edge-pods``), how often the clone
takes the label, there and overall, and the mean probability each actor gives the label. A
clone that takes the label where the teacher leaves the reference, and still plays like the
reference, was taught choices that matter little.

    python bench/clone_agreement.py RUN_DIRECTORY
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from eat_policy import nets, train
from eat_policy.agents import eat as eat_agent

BATCH = 512


def greedy(actor: nets.Actor, labels: train.ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled state's greedy option under ``actor`` and the probability it gives the label."""
    options, p_label = [], []
    for start in range(0, len(labels), BATCH):
        idx = np.arange(start, min(len(labels), start + BATCH))
        obs = {k: torch.as_tensor(v[idx]) for k, v in labels.obs.items()}
        with torch.no_grad():
            logp = nets.masked_log_probs(*actor(obs), obs)
        options.append(logp.argmax(1).numpy())
        p_label.append(logp[torch.arange(len(idx)), torch.as_tensor(labels.action[idx])].exp().numpy())
    return np.concatenate(options), np.concatenate(p_label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?",
                        help="training run directory (demos.npz and policy.pt); default: the newest under runs/")
    parser.add_argument("--reference", type=Path, default=eat_agent.CHECKPOINTS / "eat-edge-pods.pt")
    args = parser.parse_args()
    if args.run is None:
        runs = sorted(Path("runs").glob(f"*/{train.DEMOS_FILE}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            print(f"no run with a warm start ({train.DEMOS_FILE}) under runs/: give a run directory")
            return
        args.run = runs[-1].parent
    torch.manual_seed(0)
    labels = train.ReplayBuffer.load_states(args.run / train.DEMOS_FILE)
    label = labels.action[: len(labels)]
    ref, p_ref = greedy(eat_agent.load_actor(args.reference), labels)
    clone, p_clone = greedy(eat_agent.load_actor(args.run / "policy.pt"), labels)
    leaves = ref != label
    print(f"{len(labels)} labels; the teacher leaves {args.reference.name}'s option on {leaves.mean():.1%}")
    print(f"the clone takes the label on {np.mean(clone == label):.1%} (where the teacher leaves the reference: "
          f"{np.mean(clone[leaves] == label[leaves]):.1%}); the reference's option on {np.mean(clone == ref):.1%}")
    print(f"mean probability of the label: reference {p_ref.mean():.3f}, clone {p_clone.mean():.3f} "
          f"(where the teacher leaves the reference: {p_ref[leaves].mean():.3f}, {p_clone[leaves].mean():.3f})")


if __name__ == "__main__":
    main()
