"""Progress on a log: plain lines, so a long run shows how far it got."""

from eat_policy import progress


def test_plain_progress_prints_a_line_per_new_note_and_the_last_state(capsys) -> None:  # type: ignore[no-untyped-def]
    with progress.PlainProgress(every_s=3600) as bar:
        task = bar.add_task("warm start", total=4, info="")
        bar.update(task, info="episode 1")
        bar.advance(task)
        bar.advance(task)  # same note, within the period: no line
        bar.update(task, info="cloning")
        bar.advance(task)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, (done, note) in zip(lines, [("0/4", "episode 1"), ("2/4", "cloning"), ("3/4", "cloning")]):
        assert line.startswith(f"warm start {done} ") and line.endswith(f"s {note}")
