"""Signed privacy reports: canonical JSON, the schema, signing and every way verification refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import msgpack
import pytest

from mor_secure import pki
from mor_secure.reports import (
    INF,
    CanonicalError,
    ReportError,
    SignedReport,
    canonical_json,
    check_report,
    encode_epsilon,
    report_epsilon,
    sign_report,
    verify_report,
)


def make_report(**changes) -> dict:
    report = {
        "epsilon": 3.0,
        "epsilon_rdp": 3.41,
        "delta": 1e-5,
        "accountant": "prv",
        "noise_multiplier": 0.875,
        "sample_rate": 0.032,
        "steps": 94,
        "n_pairs": 1000,
        "data_fingerprint": "sha256:" + "ab" * 32,
        "model_sha256": "cd" * 32,
        "family": "dual-encoder",
        "base": "",
        "created": "2026-11-25T14:00:00Z",
    }
    report.update(changes)
    return report


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """A second CA with a client 'site-a' (same name as the project's) and a revoked client 'site-r'."""
    ca_dir = tmp_path_factory.mktemp("other") / "ca"
    pki.init_ca(ca_dir)
    pki.issue(ca_dir, role="client", name="site-a")
    pki.issue(ca_dir, role="client", name="site-r")
    pki.revoke(ca_dir, "site-r")
    return ca_dir


def test_canonical_json_is_sorted_compact_and_exact():
    assert canonical_json({"b": 0.1, "a": [1, True, None], "é": "x"}) == '{"a":[1,true,null],"b":0.1,"é":"x"}'.encode()
    assert canonical_json({"x": 1e-5, "y": 1.0}) == b'{"x":1e-05,"y":1.0}'
    value = 0.1 + 0.2
    assert json.loads(canonical_json(value)) == value  # floats survive exactly (repr)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinity_naming_the_key(bad):
    with pytest.raises(CanonicalError, match=r"epsilon.*'inf'"):
        canonical_json({"report": {"epsilon": bad}})
    with pytest.raises(CanonicalError, match="bytes"):
        canonical_json({"x": b"raw"})


def test_epsilon_encoding_round_trips_infinity():
    assert encode_epsilon(math.inf) == INF and encode_epsilon(2) == 2.0
    assert report_epsilon(make_report(epsilon=INF, dp=False)) == math.inf
    assert report_epsilon(make_report(epsilon=None, private=False)) == math.inf
    assert report_epsilon(make_report()) == 3.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epsilon": math.nan}, "finite"),
        ({"epsilon": -1.0}, "finite and >= 0"),
        ({"epsilon": INF}, "needs"),  # infinite without a no-DP marker
        ({"epsilon": 2.0, "dp": False}, "finite epsilon"),  # a no-DP run cannot claim a guarantee
        ({"epsilon": "big"}, "only 'inf'"),
        ({"steps": True}, "'steps' must be int"),
        ({"steps": 9.5}, "'steps' must be int"),
        ({"delta": 1.5}, "delta"),
        ({"delta": None}, "'delta' is null"),
        ({"sample_rate": 2.0}, "sample_rate"),
        ({"dp": "no"}, "'dp' must be bool"),
        ({"note": [math.inf]}, "not canonical"),
        ({"blob": "x" * 70_000}, "bytes"),
    ],
)
def test_schema_refuses_bad_reports(changes, message):
    with pytest.raises(ReportError, match=message):
        check_report(make_report(**changes))


def test_schema_names_a_missing_key():
    report = make_report()
    del report["model_sha256"]
    with pytest.raises(ReportError, match="'model_sha256'"):
        check_report(report)


def test_no_dp_reports_are_accepted_in_both_spellings():
    check_report(make_report(epsilon=INF, epsilon_rdp=INF, dp=False))
    check_report(
        make_report(epsilon=None, epsilon_rdp=None, private=False, baseline=True, delta=None, noise_multiplier=0.0)
    )


@pytest.mark.parametrize("private", [True, False])
def test_the_training_report_format_signs_and_verifies(pki_dir, private):
    """What DP training writes as privacy_report.json (mor_secure.privacy) is a valid signed report."""
    from mor_secure.privacy import AccountantHistory, PrivacyReport

    eps = 3.0 if private else math.inf
    written = PrivacyReport(
        family="dual-encoder",
        base="",
        private=private,
        epsilon=eps,
        epsilon_rdp=eps,
        delta=1e-5,
        accountant="prv",
        noise_multiplier=0.875 if private else 0.0,
        sample_rate=0.032,
        steps=94,
        n_pairs=1000,
        max_grad_norm=1.0,
        data_fingerprint="sha256:" + "ab" * 32,
        model_sha256="cd" * 32,
        run_id="run-1",
        time="2026-11-25T14:00:00Z",
        history=AccountantHistory([(0.875, 0.032, 94)]).state_dict(),
    ).to_json()
    report = json.loads(json.dumps(written))  # as read back from privacy_report.json
    signed = sign_report(report, pki_dir / "site-a.key")
    assert verify_report(signed, pki_dir / "ca.pem").name == "site-a"
    assert report_epsilon(report) == eps


def test_sign_verify_round_trip_through_json_and_msgpack(pki_dir):
    signed = sign_report(make_report(), pki_dir / "site-a.key")
    assert verify_report(signed, pki_dir / "ca.pem", crl=pki_dir / "crl.pem") == pki.Identity("client", "site-a")
    via_json = SignedReport.from_dict(json.loads(json.dumps(signed.to_dict())))
    via_msgpack = SignedReport.from_dict(msgpack.unpackb(msgpack.packb(signed.to_dict())))
    assert via_json == signed == via_msgpack
    assert verify_report(via_msgpack, pki.load_cert(pki_dir / "ca.pem")).name == "site-a"


def test_tampered_epsilon_is_refused(pki_dir):
    signed = sign_report(make_report(epsilon=8.0), pki_dir / "site-b.key")
    forged = dataclasses.replace(signed, report={**signed.report, "epsilon": 1.0})
    with pytest.raises(ReportError, match="signature on 'site-b'.*does not match"):
        verify_report(forged, pki_dir / "ca.pem")


def test_another_sites_signature_is_refused(pki_dir):
    by_b = sign_report(make_report(), pki_dir / "site-b.key")
    claimed_as_a = dataclasses.replace(by_b, cert_pem=(pki_dir / "site-a.pem").read_bytes())
    with pytest.raises(ReportError, match="does not match"):
        verify_report(claimed_as_a, pki_dir / "ca.pem")


def test_certificate_from_another_ca_is_refused(pki_dir, other_ca):
    signed = sign_report(make_report(), other_ca / "site-a.key")
    assert verify_report(signed, other_ca / "ca.pem").name == "site-a"
    with pytest.raises(ReportError, match="not issued by the project CA"):
        verify_report(signed, pki_dir / "ca.pem")


def test_coordinator_certificate_may_not_sign_reports(pki_dir):
    signed = sign_report(make_report(), pki_dir / "coord.key")
    with pytest.raises(ReportError, match="coordinator certificate of 'coord'.*only a site's client"):
        verify_report(signed, pki_dir / "ca.pem")


def test_revoked_certificate_is_refused_with_the_crl(other_ca):
    signed = sign_report(make_report(), other_ca / "site-r.key")
    assert verify_report(signed, other_ca / "ca.pem").name == "site-r"  # no CRL given: not checked
    with pytest.raises(ReportError, match=r"mor://client/site-r.*revoked"):
        verify_report(signed, other_ca / "ca.pem", crl=other_ca / "crl.pem")


def test_foreign_crl_is_refused(pki_dir, other_ca):
    signed = sign_report(make_report(), pki_dir / "site-a.key")
    with pytest.raises(ReportError, match="not signed by the CA"):
        verify_report(signed, pki_dir / "ca.pem", crl=other_ca / "crl.pem")


def test_certificate_outside_its_validity_is_refused(pki_dir):
    signed = sign_report(make_report(), pki_dir / "site-a.key")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    with pytest.raises(ReportError, match="not valid at"):
        verify_report(signed, pki_dir / "ca.pem", at=later)


def test_signing_needs_the_matching_certificate_and_a_valid_report(pki_dir):
    with pytest.raises(ReportError, match="does not belong to the key"):
        sign_report(make_report(), pki_dir / "site-a.key", pki_dir / "site-b.pem")
    with pytest.raises(ReportError, match="does not exist"):
        sign_report(make_report(), pki_dir / "nobody.key")
    with pytest.raises(ReportError, match="'epsilon'"):
        sign_report(make_report(epsilon=math.inf), pki_dir / "site-a.key")


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: {**d, "extra": 1}, "exactly the keys"),
        (lambda d: {**d, "signature": "%%%"}, "not valid base64"),
        (lambda d: {**d, "cert_pem": 5}, "base64 text"),
        (lambda d: {**d, "report": {**d["report"], "steps": -1}}, "'steps' must be >= 0"),
        (lambda d: [d], "exactly the keys"),
    ],
)
def test_from_dict_refuses_malformed_input(pki_dir, mangle, message):
    data = sign_report(make_report(), pki_dir / "site-a.key").to_dict()
    with pytest.raises(ReportError, match=message):
        SignedReport.from_dict(mangle(data))


def test_garbage_certificate_is_refused(pki_dir):
    signed = sign_report(make_report(), pki_dir / "site-a.key")
    with pytest.raises(ReportError, match="no valid PEM certificate"):
        verify_report(dataclasses.replace(signed, cert_pem=b"not a cert"), pki_dir / "ca.pem")
