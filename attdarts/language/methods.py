"""Search methods as options of a space: one `Option` per setting, declared once.

Each option is a published method's mechanism (README, "Search methods"), written as a
`key = value` line of a `space { ... }` block. Every stage reads this table: the transform
converts and checks values, the printer writes the options that differ from their default (so a
space without options prints as before), the IR validator asks `problems` for combinations that
cannot work, README's table lists them.

| key | method | value (default) |
|---|---|---|
| partial_channels | PC-DARTS (Xu et al. 2020) | K, 1/K of the channels enter the mixture (1: off) |
| edge_normalisation | PC-DARTS | true / false (false) |
| max_skip_connect | P-DARTS (Chen et al. 2019) | at most N skip_connect in the derived normal cell (none) |
| max_identity | new here | at most N identity attentions in the derived normal cell (none) |
| stop_at_skips | DARTS+ (Liang et al. 2019) | stop when the derived normal cell has N skips (none) |
| auxiliary_skip | DARTS- (Chu et al. 2021) | off / linear / cosine decay of b from 1 to 0 (off) |
| auxiliary_identity | new here | the same on every attention mixture (off) |
| beta_decay | beta-DARTS (Ye et al. 2022) | lambda of the logsumexp regulariser (0: off) |
| beta_decay_schedule | beta-DARTS | linear (lambda * epoch / epochs) / constant (linear) |
| smoothing | SDARTS-RS (Chen and Hsieh 2020) | eps of the uniform noise on the weights (0: off) |

Torch-free and IR-free (the IR imports this module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DECAYS", "OPTIONS", "Option"]

DECAYS = ("off", "linear", "cosine")  # how an auxiliary skip's weight b falls from 1 to 0
MAX_PARTIAL_CHANNELS = 64


@dataclass(frozen=True)
class Option:
    """One search-method setting of a space.

    `kind` is "int", "bool", "float" or "choice"; `default` is the value that switches the
    method off (None: not set); `minimum` bounds numbers from below, `maximum` from above.
    `method` and `summary` are what README's table says.
    """

    key: str
    kind: str
    default: Any
    method: str
    summary: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def convert(self, value: object) -> tuple[Any, str | None]:
        """(the value as the IR holds it, None) or (None, what was expected)."""
        if self.default is None and value == "none":
            return None, None  # written out only to keep a comment (printer)
        if self.kind == "bool":
            if value in ("true", "false"):
                return value == "true", None
            return None, f"'{self.key}' must be true or false"
        if self.kind == "choice":
            if value in self.choices:
                return value, None
            return None, f"'{self.key}' must be one of " + ", ".join(self.choices)
        whole = self.kind == "int"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (whole and not isinstance(value, int)) or not math.isfinite(value):
            noun = "a whole number" if whole else "a number"
            return None, f"'{self.key}' must be {noun}, {self._range()}"
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            return None, f"'{self.key}' is {value}; it must be {self._range()}"
        return (int(value) if whole else float(value)), None

    def _range(self) -> str:
        if self.maximum is not None:
            return f"from {_number(self.minimum)} to {_number(self.maximum)}"
        return f"at least {_number(self.minimum)}"

    def text(self, value: object) -> str:
        """The value as the printer writes it."""
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "float":
            return repr(float(value))
        return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


OPTIONS: dict[str, Option] = {option.key: option for option in (
    Option("partial_channels", "int", 1, "PC-DARTS (Xu et al., ICLR 2020)",
           "K: 1/K of each edge's channels enter the mixtures, the rest bypass them, then a "
           "channel shuffle (1: off)", minimum=1, maximum=MAX_PARTIAL_CHANNELS),
    Option("edge_normalisation", "bool", False, "PC-DARTS (Xu et al., ICLR 2020)",
           "one weight per edge, softmax over each node's incoming edges; derivation ranks "
           "edges by operation weight x edge weight"),
    Option("max_skip_connect", "int", None, "P-DARTS (Chen et al., ICCV 2019)",
           "at most N skip_connect in the derived normal cell (extra ones become the next "
           "strongest choices)", minimum=0),
    Option("max_identity", "int", None, "new here (P-DARTS's cap on attentions)",
           "at most N edges without attention (identity) in the derived normal cell", minimum=0),
    Option("stop_at_skips", "int", None, "DARTS+ (Liang et al., 2019)",
           "stop the search at the end of the first epoch whose derived normal cell has N or "
           "more skip_connect (DARTS+: 2); epochs without architecture steps and the last "
           "epoch do not count", minimum=1),
    Option("auxiliary_skip", "choice", "off", "DARTS- (Chu et al., ICLR 2021)",
           "every operation mixture gets + b * x, b decaying from 1 to 0 over the search; gone "
           "at derivation", choices=DECAYS),
    Option("auxiliary_identity", "choice", "off", "new here (DARTS- on attentions)",
           "every attention mixture gets + b * h, b decaying from 1 to 0", choices=DECAYS),
    Option("beta_decay", "float", 0.0, "beta-DARTS (Ye et al., CVPR 2022)",
           "lambda: adds lambda_t * (mean over the rows of alpha, beta and gamma of "
           "logsumexp(row)) to the architecture loss (0: off)", minimum=0.0),
    Option("beta_decay_schedule", "choice", "linear", "beta-DARTS (Ye et al., CVPR 2022)",
           "lambda_t in 0-based epoch t of E: linear, lambda * t / E (beta-DARTS's code), or "
           "constant, lambda",
           choices=("linear", "constant")),
    Option("smoothing", "float", 0.0, "SDARTS-RS (Chen and Hsieh, ICML 2020)",
           "eps: uniform noise in [-eps, eps] on alpha and the attention weights for each "
           "weight step (0: off)", minimum=0.0, maximum=1.0),
)}
