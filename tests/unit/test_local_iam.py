"""The local cloud's IAM decision against IAM's documented rules, and on the packaged policies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.iam import ACCOUNT, BUCKET_ARN, REPO, resolve
from tuneloop.local.iam import Policy, decide


def policy(*statements: dict[str, Any]) -> Policy:
    return Policy.parse("p", {"Version": "2012-10-17", "Statement": list(statements)})


ALLOW_GET = {"Sid": "Get", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}


def test_an_explicit_deny_wins_and_nothing_allowed_is_denied() -> None:
    deny = {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::b/secret/*"}
    assert decide([policy(ALLOW_GET)], "s3:GetObject", "arn:aws:s3:::b/x").allowed
    refused = decide([policy(ALLOW_GET, deny)], "s3:GetObject", "arn:aws:s3:::b/secret/k")
    assert not refused.allowed and refused.statements == ("NoSecrets",) and "explicitly denied" in refused.reason
    nothing = decide([policy(ALLOW_GET)], "s3:PutObject", "arn:aws:s3:::b/x")
    assert not nothing.allowed and nothing.reason == "no statement allows it"


def test_wildcards_span_slashes_actions_ignore_case_and_arns_do_not() -> None:
    assert decide([policy(ALLOW_GET)], "S3:getobject", "arn:aws:s3:::b/deep/er/key").allowed
    assert not decide([policy(ALLOW_GET)], "s3:GetObject", "arn:aws:s3:::B/key").allowed
    one = {**ALLOW_GET, "Resource": "arn:aws:s3:::b/k?"}
    assert decide([policy(one)], "s3:GetObject", "arn:aws:s3:::b/k1").allowed
    assert not decide([policy(one)], "s3:GetObject", "arn:aws:s3:::b/k12").allowed
    literal = {**ALLOW_GET, "Resource": "arn:aws:s3:::b/[a].txt"}  # brackets are not a character class
    assert decide([policy(literal)], "s3:GetObject", "arn:aws:s3:::b/[a].txt").allowed
    assert not decide([policy(literal)], "s3:GetObject", "arn:aws:s3:::b/a.txt").allowed


def test_not_action_and_not_resource() -> None:
    everything_but = {"Sid": "A", "Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::private/*"}
    assert decide([policy(everything_but)], "s3:GetObject", "arn:aws:s3:::b/x").allowed
    assert not decide([policy(everything_but)], "iam:PassRole", "arn:aws:iam::1:role/r").allowed
    assert not decide([policy(everything_but)], "s3:GetObject", "arn:aws:s3:::private/x").allowed


def test_an_allow_whose_condition_fails_is_no_deny() -> None:
    """Where moto's check refuses: a conditioned Allow that does not hold is silent, and
    another statement may still allow."""
    tagged = {**ALLOW_GET, "Sid": "Tagged", "Condition": {"StringEquals": {"aws:ResourceTag/team": "a"}}}
    assert decide([policy(tagged, ALLOW_GET)], "s3:GetObject", "arn:aws:s3:::b/x", {}).allowed
    assert not decide([policy(tagged)], "s3:GetObject", "arn:aws:s3:::b/x", {}).allowed


@pytest.mark.parametrize(
    ("condition", "context", "holds"),
    [
        ({"StringEquals": {"k": ["a", "b"]}}, {"k": "b"}, True),  # values OR'ed
        ({"StringEquals": {"k": "a", "j": "b"}}, {"k": "a", "j": "c"}, False),  # keys AND'ed
        ({"StringEquals": {"k": "a"}, "StringLike": {"j": "x*"}}, {"k": "a", "j": "xy"}, True),
        ({"StringEquals": {"k": "a"}}, {}, False),  # a missing key fails the test
        ({"StringEqualsIfExists": {"k": "a"}}, {}, True),  # ... unless IfExists
        ({"StringEqualsIfExists": {"k": "a"}}, {"k": "b"}, False),
        ({"StringNotEquals": {"k": "a"}}, {}, True),  # a negated operator holds for a missing key
        ({"StringNotEquals": {"k": ["a", "b"]}}, {"k": "b"}, False),
        ({"StringEqualsIgnoreCase": {"k": "ABC"}}, {"k": "abc"}, True),
        ({"Null": {"k": "true"}}, {}, True),
        ({"Null": {"k": "false"}}, {}, False),
        ({"NumericLessThanEquals": {"n": "86400"}}, {"n": "86400"}, True),
        ({"NumericLessThanEquals": {"n": "86400"}}, {"n": "86401"}, False),
        ({"NumericLessThan": {"n": "10"}}, {"n": "ten"}, False),
        ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "true"}, True),
        ({"ForAllValues:StringLike": {"t": ["ml.m5.*"]}}, {"t": ["ml.m5.large", "ml.m5.xlarge"]}, True),
        ({"ForAllValues:StringLike": {"t": ["ml.m5.*"]}}, {"t": ["ml.m5.large", "ml.p4d.24xlarge"]}, False),
        ({"ForAllValues:StringLike": {"t": ["ml.m5.*"]}}, {}, True),  # vacuously: no values
        ({"ForAnyValue:StringEquals": {"t": "x"}}, {"t": ["y", "x"]}, True),
        ({"ForAnyValue:StringEquals": {"t": "x"}}, {}, False),
        ({"ArnLike": {"arn": "arn:aws:iam::*:role/tl-*"}}, {"arn": "arn:aws:iam::1:role/tl-x"}, True),
        ({"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}},
         {"s3:ResourceAccount": "1", "aws:PrincipalAccount": "1"}, True),
        ({"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}},
         {"s3:ResourceAccount": "2", "aws:PrincipalAccount": "1"}, False),
        ({"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}}, {"s3:ResourceAccount": "1"}, False),
        # A variable with no value makes its condition fail, a negated one too.
        ({"StringNotEquals": {"k": "${aws:PrincipalTag/team}"}}, {"k": "x"}, False),
        ({"StringEquals": {"k": "${aws:PrincipalTag/team, 'none'}"}}, {"k": "none"}, True),  # a default
        ({"StringLike": {"k": "a${*}b"}}, {"k": "a*b"}, True),  # an escaped * is a *
        ({"StringLike": {"k": "a${*}b"}}, {"k": "axb"}, False),
        ({"StringLike": {"k": "${v}"}}, {"k": "anything", "v": "*"}, False),  # a variable's * is no wildcard
        ({"ForAnyValue:StringNotEquals": {"t": "x"}}, {}, False),  # ForAnyValue with no values never holds
        ({"StringEquals": {"aws:RequestedRegion": "us-east-1"}}, {"aws:requestedregion": "us-east-1"}, True),
        ({"StringEquals": {"t": "x"}}, {"t": ()}, False),  # a key with no values
        ({"ArnLike": {"arn": "arn:aws:sns:*:111122223333"}}, {"arn": "arn:aws:sns:us-east-1:999:111122223333"}, False),
        ({"ArnLike": {"arn": "arn:aws:sns:*:111122223333:*"}}, {"arn": "arn:aws:sns:us-east-1:111122223333:t"}, True),
    ],
)  # fmt: skip
def test_conditions_as_iam_reads_them(condition: dict[str, Any], context: dict[str, Any], holds: bool) -> None:
    statement = {**ALLOW_GET, "Condition": condition}
    assert decide([policy(statement)], "s3:GetObject", "arn:aws:s3:::b/x", context).allowed is holds


def test_a_statement_iam_would_refuse_is_refused_here_too() -> None:
    with pytest.raises(ValueError, match="Effect must be Allow or Deny"):
        policy({**ALLOW_GET, "Effect": "Maybe"})
    with pytest.raises(ValueError, match="one of Action/NotAction"):
        policy({"Effect": "Allow", "Action": "s3:*", "NotAction": "iam:*", "Resource": "*"})
    with pytest.raises(ValueError, match="not one IAM has"):
        decide([policy({**ALLOW_GET, "Condition": {"NumericAbout": {"n": "1"}}})], "s3:GetObject",
               "arn:aws:s3:::b/x", {"n": "1"})  # fmt: skip


def test_the_packaged_dev_policy_as_a_function_of_the_stage_meets_it() -> None:
    dev = Policy.parse("policy-dev", resolve(json.loads((REPO / ".chalice" / "policy-dev.json").read_text())))
    mine = {"s3:ResourceAccount": ACCOUNT, "aws:PrincipalAccount": ACCOUNT}
    assert decide([dev], "s3:PutObject", f"{BUCKET_ARN}/labels/demo/x.jsonl", mine).allowed
    # The same key in a bucket of another account (a name taken there) is refused.
    theirs = {"s3:ResourceAccount": "999999999999", "aws:PrincipalAccount": ACCOUNT}
    assert not decide([dev], "s3:PutObject", f"{BUCKET_ARN}/labels/demo/x.jsonl", theirs).allowed
    assert not decide([dev], "s3:PutObject", f"{BUCKET_ARN}/runs/x/model.tar.gz", mine).allowed
    table = f"arn:aws:dynamodb:eu-west-1:{ACCOUNT}:table/tuneloop-dev-runs"
    assert decide([dev], "dynamodb:UpdateItem", table, {}).allowed
    assert not decide([dev], "dynamodb:DeleteTable", table, {}).allowed
