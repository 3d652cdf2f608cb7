"""Near-identical gallery images (crops, re-encodes, resizes of one photo) shown as one hit."""

from __future__ import annotations

import numpy as np

# Cosine similarity at which two gallery faces count as copies of one photo. On the dev set (28 people,
# 174 photos, w600k_mbf) distinct photos of the same person reach at most 0.865 (99th percentile 0.822),
# while crops and re-encodes of one photo at a usable size score 0.95 (median); 0.90 keeps a margin from both.
# EngineConfig.near_duplicate_similarity defaults to it.
NEAR_DUPLICATE = 0.90


def group_near_duplicates(embeddings: np.ndarray, threshold: float = NEAR_DUPLICATE) -> list[list[int]]:
    """Groups of row indices (n, d L2-normalised rows, best match first) whose faces are near-identical.

    Greedy: each row joins the first group whose first row (its representative, the best-ranked copy) it
    matches at >= `threshold`, else starts a group. Groups and their members keep the input order.
    """
    vecs = np.asarray(embeddings, dtype=np.float32)
    groups: list[list[int]] = []
    reps: list[int] = []
    for i in range(len(vecs)):
        if reps:
            sims = vecs[reps] @ vecs[i]
            j = int(np.argmax(sims))
            if float(sims[j]) >= threshold:
                groups[j].append(i)
                continue
        reps.append(i)
        groups.append([i])
    return groups
