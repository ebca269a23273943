"""Native emotion labels of each dataset and their MEGC composite classes.

MEGC2019 composite (Composite Database Evaluation): three classes, negative /
positive / surprise, labelled 0 / 1 / 2 in the official ground-truth file.

* CASME II: negative = disgust + repression; positive = happiness; surprise =
  surprise; others, fear and sadness are excluded.
* SAMM: negative = anger + contempt + disgust + fear + sadness; positive =
  happiness; surprise = surprise; "Other" is excluded.
* SMIC-HS: its own three classes.
* CAS(ME)^3 part A (not part of MEGC2019; the same reduction as used for it in
  later MEGC rounds): negative = disgust + fear + anger + sad; positive = happy;
  surprise = surprise; others excluded.

Native labels are matched case-insensitively, surrounding spaces ignored.
"""

from __future__ import annotations

COMPOSITE_LABELS: dict[str, int] = {"negative": 0, "positive": 1, "surprise": 2}
COMPOSITE_NAMES: tuple[str, ...] = ("negative", "positive", "surprise")

COMPOSITE_CLASS: dict[str, dict[str, str]] = {
    "casme2": {"disgust": "negative", "repression": "negative", "happiness": "positive",
               "surprise": "surprise"},
    "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
             "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
    "casme3": {"disgust": "negative", "fear": "negative", "anger": "negative", "sad": "negative",
               "sadness": "negative", "happy": "positive", "happiness": "positive", "surprise": "surprise"},
    "composite": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
}


def composite_class(dataset: str, native: str) -> str:
    """The composite class of a native label, or "" when MEGC excludes it."""
    return COMPOSITE_CLASS[dataset].get(str(native).strip().lower(), "")
