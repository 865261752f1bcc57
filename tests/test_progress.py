"""Progress written to a file or a pipe: plain lines as the work goes, not one bar at the end."""

from rich.progress import TextColumn

from holisafe.core.progress import progress_bar, track


def test_redirected_progress_prints_a_line_per_tenth(capsys):
    with progress_bar(True, TextColumn("{task.fields[loss]}")) as bar:
        task = bar.add_task("training", total=20, loss="")
        for step in range(20):
            bar.update(task, advance=1, loss=f"loss {20 - step}")
        lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11
    assert lines[0].startswith("training: 0/20 (")
    assert lines[5].startswith("training: 10/20 loss 11 (")
    assert lines[-1].startswith("training: 20/20 loss 1 (")


def test_track_yields_everything_and_reports_it(capsys):
    assert list(track(range(3), "counting", True)) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines()[-1].startswith("counting: 3/3 (")
    assert list(track(range(3), "quiet", False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
