"""A stage for the lock tests: writes its output, then waits until a gate file appears (so a second run can be
started while the first one holds its locks). Registered as kind 'gate' by the tests that use it."""
import time
from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.errors import CompassError
from compass.stages import Port

VERSION = 1
EXAMPLE = "compass gate --text in.txt --out gate/ --gate open.flag"


class Config(StageConfig):
    gate: str = Field("", description="file whose appearance lets the stage finish")
    started: str = Field("", description="file the stage creates once it holds its locks and is running")
    wait_s: float = Field(60.0, description="give up after this long")


INPUTS = {"text": Port("a text file")}
OUTPUTS = {"text": "out.txt"}


def run(config: Config, ctx) -> dict:  # ctx: compass.stagekit.StageContext
    inputs, out_dir = ctx.inputs, ctx.out_dir
    (out_dir / "out.txt").write_text(inputs["text"].read_text())
    Path(config.started).touch()
    deadline = time.monotonic() + config.wait_s
    while not Path(config.gate).exists():
        if time.monotonic() > deadline:
            raise CompassError(f"gate {config.gate} never opened")
        time.sleep(0.02)
    return {"waited": True}
