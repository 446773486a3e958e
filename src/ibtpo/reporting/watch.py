"""Early warnings of a run that cannot learn: groups without a learning signal, completions cut by the length cap.

:class:`EarlyWarnings` reads the metrics of the first ``window`` steps (and of the first evaluation) and returns
each warning once, as one line:
- most question groups had all-equal rewards (``eff_rate`` below ``min_eff_rate``): their advantages are zero, so
  those steps teach nothing (the questions are too hard or too easy for the model, or the reward finds no answers);
- a tree sampler forked only at the root (``rollout/tree_depth`` 1: completions without step boundaries, e.g. short
  answers with no blank line), so it sampled independently;
- most completions hit ``max_completion_length`` (``response_length/clip_ratio``, evaluation ``cap_hit_rate`` above
  ``max_cap_rate``): answers are cut before they are stated and score 0.
"""

from __future__ import annotations

from statistics import mean


class EarlyWarnings:
    """Collects the first steps' metrics; :meth:`after_step` / :meth:`after_eval` return warnings not given yet."""

    def __init__(self, cap: int, window: int = 3, min_eff_rate: float = 0.25, max_cap_rate: float = 0.5,
                 tree: bool = False, delimiter: str = "\n\n"):
        self.cap, self.window, self.tree, self.delimiter = cap, window, tree, delimiter
        self.depth: list[float] = []
        self.min_eff_rate, self.max_cap_rate = min_eff_rate, max_cap_rate
        self.eff: list[float] = []
        self.clip: list[float] = []
        self.given: set[str] = set()

    def _once(self, key: str, message: str) -> list[str]:
        if key in self.given:
            return []
        self.given.add(key)
        return [message]

    def after_step(self, metrics: dict[str, float], last: bool = False) -> list[str]:
        """Warnings once `window` steps were seen (or at the last step of a shorter run)."""
        if len(self.eff) >= self.window:
            return []
        if "eff_rate" in metrics:
            self.eff.append(float(metrics["eff_rate"]))
        if "response_length/clip_ratio" in metrics:
            self.clip.append(float(metrics["response_length/clip_ratio"]))
        if "rollout/tree_depth" in metrics:
            self.depth.append(float(metrics["rollout/tree_depth"]))
        if len(self.eff) < self.window and not last:
            return []
        out: list[str] = []
        n = len(self.eff)
        if self.eff and mean(self.eff) < self.min_eff_rate:
            out += self._once("eff", f"warning: in the first {n} steps {100 * (1 - mean(self.eff)):.0f}% of the "
                                     f"question groups had all-equal rewards, so no learning signal: the questions "
                                     f"may be too hard or too easy for the model, or the reward finds no answers "
                                     f"(look at the completions with `ibtpo eval --samples FILE`)")
        if self.clip and mean(self.clip) > self.max_cap_rate:
            out += self._once("cap", f"warning: in the first {len(self.clip)} steps {100 * mean(self.clip):.0f}% of "
                                     f"the completions hit max_completion_length={self.cap} before ending: answers "
                                     f"are cut off; raise max_completion_length")
        if self.tree and self.depth and max(self.depth) <= 1.0:
            out += self._once("flat", f"warning: in the first {len(self.depth)} steps the tree sampler forked only at "
                                      f"the root (no step boundary {self.delimiter!r} inside the completions), so it "
                                      f"sampled independently; set step_delimiter (e.g. '\\n') to fork inside answers")
        return out

    def after_eval(self, metrics: dict[str, float]) -> list[str]:
        """A warning when most evaluation completions (any set: keys ending in ``cap_hit_rate``) hit the cap."""
        rates = {k.split("/")[1] if k.startswith("val/") else k: v for k, v in metrics.items()
                 if k.endswith("cap_hit_rate")}
        bad = {k: v for k, v in rates.items() if v > self.max_cap_rate}
        if not bad:
            return []
        shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in bad.items())
        return self._once("eval_cap", f"warning: evaluation completions that hit max_completion_length={self.cap}: "
                                      f"{shown}; raise max_completion_length")
