"""ca_bundle_info: the controller-side reading of the Dovecot CA + CRL bundle."""

import datetime
import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hardened.mailhost.plugins.filter.ca_bundle_info import FilterModule
from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority

ca_bundle_info = FilterModule().filters()["ca_bundle_info"]
PASS = "correct horse battery"
CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)
CRL = re.compile(r"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\n?", re.S)


def make_ca(folder, name="hardened.mailhost client CA", crl_days=30):
    ca = CertificateAuthority(str(folder), PASS)
    ca.init(common_name=name, crl_next_update_days=crl_days)
    with open(ca.dovecot_export_path, encoding="ascii") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    base = tmp_path_factory.mktemp("ca")
    # Two CAs with the same name: only the signature tells their CRLs apart.
    return make_ca(base / "one"), make_ca(base / "two")


def test_a_fresh_export_passes(bundles):
    info = ca_bundle_info(bundles[0])
    assert (info["certificates"], info["crls"], info["error"]) == (1, 1, None)
    assert info["crl_signed_by_ca"] is True
    assert info["ca_subject"] == info["crl_issuer"] == "CN=hardened.mailhost client CA"
    assert 29.9 <= info["crl_days_left"] <= 30.0


def test_days_left_count_from_the_given_moment(bundles):
    info = ca_bundle_info(bundles[0])
    next_update = datetime.datetime.strptime(info["crl_next_update"], "%Y%m%d%H%M%SZ")
    ten_days_before = (next_update - datetime.timedelta(days=10)).strftime("%Y%m%d%H%M%SZ")
    assert ca_bundle_info(bundles[0], now=ten_days_before)["crl_days_left"] == 10.0
    after = (next_update + datetime.timedelta(hours=12)).strftime("%Y%m%d%H%M%SZ")
    assert ca_bundle_info(bundles[0], now=after)["crl_days_left"] == -0.5


def test_a_crl_of_another_ca_with_the_same_name_is_not_signed_by_this_ca(bundles):
    foreign = CERT.search(bundles[0]).group(0) + CRL.search(bundles[1]).group(0)
    info = ca_bundle_info(foreign)
    assert info["ca_subject"] == info["crl_issuer"]
    assert info["crl_signed_by_ca"] is False


def test_counts_without_a_crl_and_with_two_certificates(bundles):
    cert = CERT.search(bundles[0]).group(0)
    assert ca_bundle_info(cert)["crls"] == 0
    assert ca_bundle_info(cert)["crl_signed_by_ca"] is False
    assert ca_bundle_info(cert + bundles[1])["certificates"] == 2
    assert ca_bundle_info("")["certificates"] == 0


def test_a_damaged_block_is_an_error_not_an_exception(bundles):
    damaged = bundles[0].replace(CRL.search(bundles[0]).group(0),
                                 "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n")
    info = ca_bundle_info(damaged)
    assert info["error"].startswith("unreadable PEM block")
    assert info["crl_signed_by_ca"] is False


def test_a_malformed_moment_is_refused(bundles):
    with pytest.raises(AnsibleFilterError, match="now must look like"):
        ca_bundle_info(bundles[0], now="yesterday")
