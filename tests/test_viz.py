"""The course's progress bar: headless runs store one summary line, never bar fragments."""
import course_lib as cl


def test_headless_bar_prints_one_line(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    out = [x * 2 for x in cl.viz.progress(range(5), desc="work", unit="item")]
    assert out == [0, 2, 4, 6, 8]
    text = capsys.readouterr()
    assert "\r" not in text.out + text.err
    lines = text.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("work: 5/5 item in ")


def test_headless_bar_manual_updates_and_postfix(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    with cl.viz.progress(total=10, desc="training", unit="step") as bar:
        for _ in range(10):
            bar.update(1)
            bar.set_postfix(loss="0.5000", refresh=False)
        bar.write("epoch 1/1")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "epoch 1/1"
    assert lines[1].startswith("training: 10/10 step in ") and lines[1].endswith("loss=0.5000")


def test_disabled_bar_is_silent(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    list(cl.viz.progress(range(3), disable=True))
    assert capsys.readouterr().out == ""
