"""Which board and chip a run was measured on, so `--resume` never joins data of two chips in one file.

The board is what it announces in HELLO: its id (a real board's serial), array size and firmware. The
chip is known only for a simulated board opened by a `sim://` URL (seed, size and physics name one
simulated chip); a real board cannot tell the host which chip sits in its socket, and neither can a
simulated board served on a pty, so their chip is recorded as unknown ("") and only the board is compared
(`rram sim serve` announces the board id SIM-S<seed> for that reason).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunIdentity:
    """Board id, array size, firmware and chip ("" when the host cannot know it) of one run."""

    board_id: str
    rows: int
    cols: int
    firmware: str
    chip: str = ""

    @classmethod
    def of(cls, board: dict, chip: str | None = None) -> RunIdentity:
        """From a board description (`Board.describe()` or a run file's `board_json`); `chip` None: from its port."""
        return cls(
            str(board.get("board_id", "")),
            int(board.get("rows", 0)),
            int(board.get("cols", 0)),
            str(board.get("firmware", "")),
            sim_chip(str(board.get("port", ""))) if chip is None else chip,
        )

    def __str__(self) -> str:
        chip = f" chip {self.chip!r}" if self.chip else " (chip not known)"
        return f"board {self.board_id} ({self.rows}x{self.cols}, firmware {self.firmware}){chip}"

    def differs(self, other: RunIdentity) -> bool:
        """Another board, array size, firmware or chip (a known chip never matches an unknown one)."""
        return self != other


def sim_chip(port: str) -> str:
    """The simulated chip a `sim://` URL opens (``seed0_64x64_<physics>``), or "" for any other port."""
    if not port.startswith("sim://"):
        return ""
    from sim_backend.chip_store import ChipId  # here: only simulated boards need the simulator
    from sim_backend.sim_url import parse_sim_options

    try:
        return ChipId.of(parse_sim_options(port).config).stem
    except ValueError:  # a URL the simulator would refuse: nothing to compare
        return ""
