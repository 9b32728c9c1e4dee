"""Progress of a training stage: where it is, how fast it goes and when it will be done.

On a terminal a tqdm bar (steps, rate, ETA, the last loss); in a log (no terminal: a job, a pipe,
`nohup`) an absl line every `every_s` seconds and at the last step:

  finetune: step 120/400 (30%), 2.5 steps/s, ETA 1m52s, loss 0.6931

The first step of a process compiles the step function (XLA: seconds to a minute of silence), so
it is announced before it runs and timed after, and the rate and ETA leave it out.
"""

import time
from typing import Callable

from absl import logging
import tqdm


def duration(seconds: float) -> str:
  """'45s', '3m05s', '2h07m'."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
  """Steps of one stage (`loop.fit`): `before_step()` then `update(loss)` around every step."""

  def __init__(self, name: str, total: int, initial: int = 0, every_s: float = 30.0,
               clock: Callable[[], float] = time.monotonic):
    """Starts the bar.

    Args:
      name: the stage.
      total: its steps.
      initial: steps already done (a resumed stage).
      every_s: seconds between two log lines when there is no terminal.
      clock: seconds (a test's fake clock).
    """
    self.name, self.total, self.step = name, total, initial
    self.every_s, self.clock = every_s, clock
    self.bar = tqdm.tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True,
                         disable=None)  # None: off without a terminal
    self.started = None  # (clock, step) after the first step, which compiles
    self.first = None
    self.logged = None

  def before_step(self) -> None:
    """Announces the compilation before this process's first step."""
    if self.first is None:
      self.first = self.clock()
      logging.info("%s: compiling the training step (XLA; the first step takes longer), then %d "
                   "step(s) to go", self.name, self.total - self.step)

  def update(self, loss: float, epoch: int) -> None:
    """One step done, with its loss."""
    now = self.clock()
    self.step += 1
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
    if self.started is None:
      self.started = (now, self.step)
      logging.info("%s: first step compiled and run in %.1f s", self.name, now - self.first)
      self.logged = now
      return
    if self.bar.disable and (now - self.logged >= self.every_s or self.step == self.total):
      self.logged = now
      logging.info("%s", self.line(now, loss))

  def line(self, now: float, loss: float) -> str:
    """The log line at `now` (module docstring)."""
    t0, n0 = self.started
    rate = (self.step - n0) / max(now - t0, 1e-9)
    left = self.total - self.step
    eta = f"ETA {duration(left / rate)}" if left else "done"
    return (f"{self.name}: step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%), "
            f"{rate:.3g} steps/s, {eta}, loss {loss:.4f}")

  def close(self) -> None:
    self.bar.close()
