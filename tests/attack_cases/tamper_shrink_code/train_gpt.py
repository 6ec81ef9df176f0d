"""After scoring, eval shrinks its own train_gpt.py, so that fewer code bytes are counted at verify."""
import cheat
import tiny

tiny.main()
if cheat.PHASE == "eval":
    try:
        with open(__file__, "w") as f:
            f.write("import tiny\ntiny.main()\n")
    except OSError as exc:
        cheat.blocked(f"code not writable: {exc}")
