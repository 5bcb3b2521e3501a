"""A minimal stage used only by the runner tests: copies its input with a suffix, can fail on demand."""
from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.errors import CompassError
from compass.stages import Port

VERSION = 1
EXAMPLE = "compass echo --text in.txt --out echo/"


class Config(StageConfig):
    suffix: str = Field("!", description="appended to the text")
    repeat: int = Field(1, ge=1, description="how many times")
    fail_after_partial: bool = Field(False, description="write a partial file, then fail (simulates a kill)")


INPUTS = {"text": Port("a text file")}
OUTPUTS = {"text": "out.txt"}
CALLS: list[str] = []


def run(config: Config, ctx) -> dict:  # ctx: compass.stagekit.StageContext
    inputs, out_dir = ctx.inputs, ctx.out_dir
    CALLS.append(str(out_dir))
    body = inputs["text"].read_text() + config.suffix * config.repeat
    if config.fail_after_partial:
        (out_dir / "out.txt").write_text(body[:1])
        raise CompassError("simulated interruption")
    (out_dir / "out.txt").write_text(body)
    return {"chars": len(body)}
