"""A restored bucket uploads each object as it was uploaded, so its ETag (which a model
package pins) comes back the same."""

from __future__ import annotations

from tuneloop.local.host import same_parts

MIB = 2**20


def test_one_part_stays_one_part_and_n_parts_split_where_the_sdk_split_them() -> None:
    single = same_parts("6d1addf8b7d93310c01519675a226e1c", 87 * MIB)
    assert single.multipart_threshold > 87 * MIB
    # boto3 and the CLI upload in 8 MiB parts: 87.3 MiB went up as 11 of them.
    split = same_parts("0227c7b0dc653189b89c52dd4e8017ca-11", int(87.3 * MIB))
    assert split.multipart_threshold == 1 and split.multipart_chunksize == 8 * MIB
    # 16 MiB parts: 3 parts of a 40 MiB object.
    assert same_parts("abc-3", 40 * MIB).multipart_chunksize == 16 * MIB
    # An unknown ETag shape: one part.
    assert same_parts("", 10).multipart_threshold > 10
