"""Stage progress in a log: the first step (the compilation) announced and timed, then a line with
the rate and the ETA every `every_s` seconds, computed without the first step."""

from absl import logging

from gimp_jax.train import progress


def test_log_lines_give_rate_and_eta_without_the_compiled_first_step(monkeypatch):
  seen = []
  monkeypatch.setattr(logging, "info", lambda msg, *args: seen.append(msg % args))
  now = [100.0]
  bar = progress.Progress("finetune", total=40, initial=10, every_s=30.0, clock=lambda: now[0])
  bar.bar.disable = True  # no terminal (tqdm decides from the stream; the log is what is tested)
  bar.before_step()
  now[0] += 25.0  # the first step compiles
  bar.update(0.7, epoch=1)
  times = []
  for step in range(12, 41):  # then 4 s a step
    bar.before_step()
    now[0] += 4.0
    bar.update(0.5, epoch=2)
    times.append((step, now[0]))
  bar.close()
  assert seen[:2] == ["finetune: compiling the training step (XLA; the first step takes longer), "
                      "then 30 step(s) to go", "finetune: first step compiled and run in 25.0 s"]
  # A line when 30 s have passed since the last one (steps 19, 27, 35: 32 s apart) and at the end.
  expected = []
  for step, t in times:
    if step in (19, 27, 35, 40):
      rate = (step - 11) / (t - 125.0)  # 0.25 steps/s
      eta = (40 - step) / rate
      tail = f"ETA {progress.duration(eta)}" if step < 40 else "done"
      expected.append(f"finetune: step {step}/40 ({100 * step / 40:.0f}%), {rate:.3g} steps/s, "
                      f"{tail}, loss 0.5000")
  assert seen[2:] == expected
  assert expected[0] == "finetune: step 19/40 (48%), 0.25 steps/s, ETA 1m24s, loss 0.5000"


def test_durations_read_as_a_person_writes_them():
  assert [progress.duration(s) for s in (4.4, 59.6, 185, 7620)] == ["4s", "1m00s", "3m05s",
                                                                     "2h07m"]
