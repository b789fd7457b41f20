"""Reply classification: a golden table of real-world replies, and the rules around it.

The replies are written after the texts Gmail, Outlook/Microsoft 365, Yahoo/AOL, iCloud,
Comcast, AT&T and common MTAs (Postfix, Exim, sendmail) send; the ``[203.0.113.5]``
addresses and host names are placeholders.
"""

from __future__ import annotations

import pytest

from postline.deliver import classify
from postline.deliver.classify import (
    bounce_class,
    classify_connection_failure,
    classify_reply,
    suppression_list,
)
from postline.model.outcomes import Bounced, Deferred, Delivered, Outcome, Scope

R, M, S = Scope.RECIPIENT, Scope.MESSAGE, Scope.SESSION

SENDGRID_CLASSES = {
    "Content",
    "Frequency or Volume Too High",
    "Invalid Address",
    "Mailbox Unavailable",
    "Reputation",
    "Technical Failure",
    "Unclassified",
}


def summary(outcome: Outcome) -> str:
    """delivered | deferred <scope> [throttled] | <type> / <classification> / <list>"""
    if isinstance(outcome, Delivered):
        return "delivered"
    if isinstance(outcome, Deferred):
        return f"deferred {outcome.scope.value}" + (" throttled" if outcome.throttled else "")
    assert isinstance(outcome, Bounced)
    listed = suppression_list(outcome) or "-"
    return f"{outcome.type} / {outcome.classification} / {listed}"


INVALID = "bounce / Invalid Address / bounces"
GONE = "bounce / Mailbox Unavailable / bounces"
FULL = "bounce / Mailbox Unavailable / -"
REPUTATION = "blocked / Reputation / blocks"
CONTENT = "blocked / Content / blocks"
TECHNICAL = "blocked / Technical Failure / blocks"
FREQUENCY = "blocked / Frequency or Volume Too High / blocks"

# fmt: off
GOLDEN: list[tuple[int, str, Scope, str]] = [
    # --- Gmail
    (250, "2.0.0 OK  1700000000 a1-20020a17si123.456 - gsmtp", M, "delivered"),
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try "
     "5.1.1 double-checking the recipient's email address for typos or 5.1.1 unnecessary "
     "spaces. https://support.google.com/mail/?p=NoSuchUser a1si - gsmtp", R, INVALID),
    (550, "5.2.1 The email account that you tried to reach is disabled. "
     "https://support.google.com/mail/?p=DisabledUser a1si - gsmtp", R, GONE),
    (452, "4.2.2 The email account that you tried to reach is over quota. Please direct the "
     "recipient to https://support.google.com/mail/?p=OverQuotaTemp a1si - gsmtp", R,
     "deferred recipient"),
    (552, "5.2.2 The email account that you tried to reach is over quota. "
     "https://support.google.com/mail/?p=OverQuotaPerm a1si - gsmtp", R, FULL),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered. "
     "https://support.google.com/mail/?p=ReceivingRatePerm a1si - gsmtp", R,
     "deferred recipient throttled"),
    (421, "4.7.0 [203.0.113.5 15] Our system has detected an unusual rate of unsolicited mail "
     "originating from your IP address. To protect our users from spam, mail sent from your "
     "IP address has been temporarily rate limited. "
     "https://support.google.com/mail/?p=UnsolicitedRateLimitError a1si - gsmtp", M,
     "deferred session throttled"),
    (550, "5.7.1 [203.0.113.5] Our system has detected that this message is likely unsolicited "
     "mail. To reduce the amount of spam sent to Gmail, this message has been blocked. "
     "https://support.google.com/mail/?p=UnsolicitedMessageError a1si - gsmtp", M, CONTENT),
    (550, "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and "
     "Gmail users, and has been blocked. The sender must authenticate with at least one of "
     "SPF or DKIM. https://support.google.com/mail/answer/81126 a1si - gsmtp", M, TECHNICAL),
    (550, "5.7.25 [203.0.113.5] The IP address sending this message does not have a PTR "
     "record setup, or the corresponding forward DNS entry does not point to the sending "
     "IP. https://support.google.com/mail/?p=IPv6AuthError a1si - gsmtp", M, TECHNICAL),
    (552, "5.2.3 Your message exceeded Google's message size limits. "
     "https://support.google.com/mail/?p=MaxSizeError a1si - gsmtp", M, CONTENT),
    (553, "5.1.2 We weren't able to find the recipient domain. Please check for any spelling "
     "errors. https://support.google.com/mail/?p=BadRcptDomain a1si - gsmtp", R, INVALID),
    (550, "5.7.1 [203.0.113.5] Gmail has detected that this message is likely suspicious due "
     "to the very low reputation of the sending domain. a1si - gsmtp", M, REPUTATION),
    (451, "4.3.0 Mail server temporarily rejected message. a1si - gsmtp", M, "deferred message"),
    (421, "4.7.28 [203.0.113.5 15] Our system has detected an unusual rate of unsolicited "
     "mail originating from your IP address. a1si - gsmtp", S, "deferred session throttled"),
    (550, "5.7.28 [203.0.113.5] Our system has detected an unusual rate of unsolicited mail "
     "originating from your IP address. a1si - gsmtp", M, FREQUENCY),
    (550, "5.7.1 [203.0.113.5] The IP you're using to send mail is not authorized to send "
     "email directly to our servers. Please use the SMTP relay at your service provider "
     "instead. https://support.google.com/mail/?p=NotAuthorizedError a1si - gsmtp", S,
     REPUTATION),
    # --- Outlook.com / Microsoft 365
    (550, "5.5.0 Requested action not taken: mailbox unavailable (S2017062302). "
     "[AM4PEPF00027A6C.eurprd04.prod.outlook.com]", R, GONE),
    (550, "5.4.1 Recipient address rejected: Access denied. For more information see "
     "https://aka.ms/EXOSmtpErrors [AM2PEPF0001C710.eurprd05.prod.outlook.com]", R, INVALID),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     R, INVALID),
    (554, "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException."
     "MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent "
     "exception", R, FULL),
    (550, "5.7.606 Access denied, banned sending IP [203.0.113.5]. To request removal from "
     "this list please visit https://sender.office.com/ and follow the directions.", S,
     REPUTATION),
    (550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. "
     "For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653", S,
     REPUTATION),
    (550, "5.7.509 Access denied, sending domain example.com does not pass DMARC "
     "verification and has a DMARC policy of reject.", M, TECHNICAL),
    (451, "4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77714) "
     "[BN1NAM02FT000.eop-nam02.prod.protection.outlook.com]", R,
     "deferred recipient throttled"),
    (451, "4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP "
     "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
     S, "deferred session throttled"),
    (550, "SC-001 (BAY004-MC1F12) Unfortunately, messages from 203.0.113.5 weren't sent. "
     "Please contact your Internet service provider since part of their network is on our "
     "block list.", S, REPUTATION),
    (550, "OU-001 (SNT004-MC1F43) Unfortunately, messages from 203.0.113.5 weren't sent. "
     "Please contact your Internet service provider. You can tell them that Hotmail does "
     "not relay dynamically-assigned IP ranges.", R, REPUTATION),
    (452, "4.5.3 Too many recipients (AS780090) [DB5EUR03FT000.eop-EUR03.prod.outlook.com]",
     R, "deferred recipient"),
    (554, "5.6.211 Invalid MIME Content: Single text value size (32770) exceeded allowed "
     "maximum (32768) for the 'Subject' header.", M, CONTENT),
    # --- Yahoo / AOL
    (554, "delivery error: dd This user doesn't have a yahoo.com account "
     "(someone@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", R, INVALID),
    (554, "delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. "
     "This mailbox is disabled (554.30). - mta4471.mail.bf1.yahoo.com", R, GONE),
    (421, "4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected "
     "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     S, "deferred session throttled"),
    (553, "5.7.2 [TSS09] All messages from 203.0.113.5 will be permanently deferred; "
     "Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", S,
     REPUTATION),
    (554, "5.7.9 Message not accepted for policy reasons. "
     "See https://postmaster.yahooinc.com/error-codes", M, REPUTATION),
    (451, "Message temporarily deferred - [160]", M, "deferred message throttled"),
    (552, "1 Requested mail action aborted, mailbox not found", R, INVALID),
    (452, "4.2.2 Mailbox full", R, "deferred recipient"),
    # --- iCloud
    (550, "5.1.1 <someone@icloud.com>: user does not exist", R, INVALID),
    (554, "5.7.1 [CS01] Message rejected due to local policy. "
     "Please visit https://support.apple.com/en-us/HT204137", M, REPUTATION),
    (552, "5.2.2 <someone@icloud.com>: user is over quota", R, FULL),
    # --- Comcast, AT&T, Proofpoint
    (554, "resimta-ch2-18v.sys.comcast.net comcast 203.0.113.5 Comcast block for spam. Please "
     "see http://postmaster.comcast.net/smtp-error-codes.php#BL000000", S, REPUTATION),
    (553, "5.3.0 flpd575 DNSBL:RBL 521< 203.0.113.5 >_is_blocked.For assistance forward this "
     "email to abuse_rbl@abuse-att.net", S, REPUTATION),
    (550, "5.7.1 Connections not accepted from servers without a valid sender domain.flph829 "
     "Fix reverse DNS for 203.0.113.5", S, TECHNICAL),
    (550, "5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.5", S, REPUTATION),
    # --- Postfix, Exim, sendmail and generic servers
    (250, "2.0.0 Ok: queued as 4Xyz1234", M, "delivered"),
    (550, "5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual "
     "mailbox table", R, INVALID),
    (550, "5.0.0 <bob@example.org>... User unknown", R, INVALID),
    (554, "5.7.1 <bob@example.org>: Recipient address rejected: User unknown", R, INVALID),
    (554, "5.7.1 Client host 203.0.113.5 rejected: Access denied", S, REPUTATION),
    (550, "5.7.1 Your IP has been blocked due to abuse", S, REPUTATION),
    (554, "5.7.1 <bob@example.org>: Relay access denied", R, TECHNICAL),
    (554, "5.7.1 Service unavailable; Client host [203.0.113.5] blocked using "
     "zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.5", R, REPUTATION),
    (554, "5.7.1 Rejected: 203.0.113.5 is listed at bl.spamcop.net", S, REPUTATION),
    (550, "5.7.1 Message rejected as spam by Content Filtering.", M, CONTENT),
    (550, "5.7.1 This message was rejected because it contains a virus", M, CONTENT),
    (450, "4.7.1 <bob@example.org>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.org.html", R, "deferred recipient"),
    (451, "4.7.1 Greylisting in action, please come back later", R, "deferred recipient"),
    (552, "5.3.4 Message size exceeds fixed maximum message size", M, CONTENT),
    (550, "No such user here", R, INVALID),
    (550, "Requested action not taken: mailbox unavailable", R, GONE),
    (550, "5.2.1 <bob@example.org>: Mailbox disabled for this recipient", R, GONE),
    (550, "5.7.13 User account disabled", R, GONE),
    (550, "Administrative prohibition", R, REPUTATION),
    (550, "Unrouteable address", R, INVALID),
    (556, "5.1.10 Recipient address has null MX", R, INVALID),
    (556, "Domain does not accept mail", R, INVALID),
    (530, "5.7.0 Must issue a STARTTLS command first", S, TECHNICAL),
    (500, "5.5.2 Syntax error, command unrecognized", S, TECHNICAL),
    (550, "5.7.23 SPF validation failed", M, TECHNICAL),
    (550, "5.7.1 Email rejected per DMARC policy for example.com", M, TECHNICAL),
    (554, "5.7.1 Daily sending quota exceeded", M, FREQUENCY),
    (554, "Transaction failed", R, "bounce / Unclassified / bounces"),
    (554, "Transaction failed", M, "blocked / Unclassified / blocks"),
    (421, "4.3.2 Service not available, closing transmission channel", S,
     "deferred session throttled"),
    (421, "Too many concurrent SMTP connections; please try again later.", S,
     "deferred session throttled"),
    (452, "4.3.1 Insufficient system storage", M, "deferred message"),
    (451, "4.4.2 Timeout waiting for data", M, "deferred message"),
]
# fmt: on


@pytest.mark.parametrize(("code", "text", "scope", "expected"), GOLDEN)
def test_golden_replies(code: int, text: str, scope: Scope, expected: str) -> None:
    assert summary(classify_reply(code, text, scope=scope)) == expected


def test_the_golden_table_is_large_and_covers_every_class() -> None:
    assert len(GOLDEN) >= 40
    seen = {e.split(" / ")[1] for *_, e in GOLDEN if " / " in e}
    assert seen == SENDGRID_CLASSES


def test_every_rule_yields_a_sendgrid_classification() -> None:
    assert {rule.classification for rule in classify.RULES} <= SENDGRID_CLASSES


def test_reply_constants_are_named_after_their_code() -> None:
    names = [n for n in dir(classify) if n[:1] == "R" and n[1:4].isdigit()]
    assert names
    for name in names:
        assert getattr(classify, name) == int(name[1:4]), name


def test_a_bounce_carries_status_response_ip_and_tls() -> None:
    out = classify_reply(550, "5.1.1 user unknown", ip="198.51.100.7", tls=True)
    assert out == Bounced(
        "550 5.1.1 user unknown", "5.1.1", "bounce", "Invalid Address", R, True, "198.51.100.7"
    )


def test_a_separately_parsed_enhanced_code_is_used_and_shown() -> None:
    out = classify_reply(550, "Go away", enhanced="5.1.1")
    assert isinstance(out, Bounced)
    assert (out.status, out.classification, out.response) == (
        "5.1.1",
        "Invalid Address",
        "550 5.1.1 Go away",
    )


def test_without_an_enhanced_code_the_status_is_the_class_default() -> None:
    out = classify_reply(554, "Transaction failed")
    assert isinstance(out, Bounced)
    assert out.status == "5.0.0"


def test_the_status_class_follows_the_reply_code() -> None:
    out = classify_reply(550, "4.2.2 over quota")
    assert isinstance(out, Bounced)
    assert out.status == "5.2.2"


def test_multiline_text_is_folded_into_one_response_line() -> None:
    out = classify_reply(250, "2.0.0 OK\n  queued")
    assert out == Delivered("250 2.0.0 OK queued")


def test_a_delivery_records_tls_and_ip() -> None:
    assert classify_reply(250, "OK", tls=True, ip="192.0.2.1") == Delivered(
        "250 OK", True, "192.0.2.1"
    )


def test_421_widens_the_scope_to_the_session_but_not_beyond_site() -> None:
    deferred = classify_reply(421, "4.7.0 Try again later", scope=R)
    assert isinstance(deferred, Deferred)
    assert deferred.scope is S
    assert classify_reply(421, "bye", scope=Scope.SITE) == Deferred("421 bye", Scope.SITE, True)


def test_an_invalid_final_reply_is_a_session_failure() -> None:
    out = classify_reply(354, "Start mail input", scope=R)
    assert out == Deferred("354 Start mail input", S, False)


@pytest.mark.parametrize(
    ("reason", "throttled"),
    [
        ("connect to mx.example.org[192.0.2.9]:25: Connection refused", False),
        ("connect to mx.example.org[192.0.2.9]:25: Connection timed out", False),
        ("TLS handshake failed: certificate verify failed", False),
        ("lost connection after CONNECT: too many connections from your IP", True),
    ],
)
def test_connection_failures_defer_the_whole_site(reason: str, throttled: bool) -> None:
    out = classify_connection_failure(reason, ip="192.0.2.9")
    assert out == Deferred(reason, Scope.SITE, throttled, "192.0.2.9")


def test_bounce_class_falls_back_to_unclassified() -> None:
    assert bounce_class(550, "", "") == "Unclassified"
    assert bounce_class(556, "", "") == "Invalid Address"


def test_suppression_by_type_and_quota() -> None:
    hard = Bounced("550 5.1.1 x", "5.1.1", "bounce", "Invalid Address")
    block = Bounced("554 5.7.1 x", "5.7.1", "blocked", "Reputation")
    full = Bounced("552 over quota", "5.0.0", "bounce", "Mailbox Unavailable")
    assert suppression_list(hard) == "bounces"
    assert suppression_list(block) == "blocks"
    assert suppression_list(full) is None
