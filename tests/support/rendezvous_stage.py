"""A stage that finishes only while another runs: it marks that it started, then waits for the other's mark.
Two of them complete only when run at the same time (the runner's --jobs test). Registered as 'rendezvous'."""
import time
from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.errors import CompassError

VERSION = 1
EXAMPLE = "compass rendezvous --out r/ --me a.started --other b.started"


class Config(StageConfig):
    me: str = Field(description="file this stage creates when it starts")
    other: str = Field(description="file whose appearance lets it finish")
    wait_s: float = Field(60.0, description="give up after this long")


INPUTS: dict = {}
OUTPUTS = {"met": "met.txt"}


def run(config: Config, ctx) -> dict:  # ctx: compass.stagekit.StageContext
    out_dir = ctx.out_dir
    Path(config.me).touch()
    deadline = time.monotonic() + config.wait_s
    while not Path(config.other).exists():
        if time.monotonic() > deadline:
            raise CompassError(f"{config.other} never appeared: the two stages did not run at the same time")
        time.sleep(0.02)
    (out_dir / "met.txt").write_text(f"{config.me} met {config.other}\n")
    return {"met": True}
