"""RFC 5321 / RFC 6531 argument grammar: what MAIL, RCPT and VRFY accept and how they refuse."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtptrio.protocol.grammar import (
    GrammarError,
    GrammarKind,
    PathArgument,
    is_esmtp_keyword,
    parse_mail_from,
    parse_rcpt_to,
    parse_vrfy,
)

SYNTAX = GrammarKind.SYNTAX
UNBALANCED = GrammarKind.UNBALANCED
BAD_MAILBOX = GrammarKind.BAD_MAILBOX
NULL_PATH = GrammarKind.NULL_PATH
PARAM_SYNTAX = GrammarKind.PARAM_SYNTAX
NON_ASCII = GrammarKind.NON_ASCII

LABEL_63 = "a" * 63
# 4 labels of 63 plus 3 dots = 255 octets: the longest domain RFC 5321 section 4.5.3.1.2 allows.
DOMAIN_255 = ".".join([LABEL_63] * 3 + ["b" * 63])
DOMAIN_256 = DOMAIN_255 + "c"  # last label 64 long: refused for the label and the total


def kind_of(call: Callable[[], object]) -> GrammarKind:
    with pytest.raises(GrammarError) as info:
        call()
    return info.value.kind


# --- MAIL FROM: accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("FROM:<a@b.example>", "a@b.example"),
        ("from:<a@b.example>", "a@b.example"),
        ("FrOm:<a@b.example>", "a@b.example"),
        ("FROM: <a@b.example>", "a@b.example"),
        ("FROM:   <a@b.example>", "a@b.example"),
        ("FROM:\t<a@b.example>", "a@b.example"),
        ("FROM: \t <a@b.example>", "a@b.example"),
        ("FROM:<>", "<>"),
        ("FROM: <>", "<>"),
        ("FROM:<Alice.Smith@Example.ORG>", "Alice.Smith@Example.ORG"),
        ("FROM:<a@localhost>", "a@localhost"),
        ("FROM:<a@b>", "a@b"),
        ("FROM:<a@1.2.3.4>", "a@1.2.3.4"),
        ("FROM:<a@x-y.example>", "a@x-y.example"),
        ("FROM:<a@x--y.example>", "a@x--y.example"),
        ("FROM:<a@xn--bcher-kva.example>", "a@xn--bcher-kva.example"),
        ("FROM:<a@0.example>", "a@0.example"),
        ("FROM:<a@9x.example>", "a@9x.example"),
        ("FROM:<a+tag@b.example>", "a+tag@b.example"),
        ("FROM:<a.b.c@d.example>", "a.b.c@d.example"),
        ("FROM:<!#$%&'*+-/=?^_`{|}~@b.example>", "!#$%&'*+-/=?^_`{|}~@b.example"),
        ("FROM:<1234@b.example>", "1234@b.example"),
        ("FROM:<-@b.example>", "-@b.example"),
        ('FROM:<"a b"@x.example>', '"a b"@x.example'),
        ('FROM:<"a.."@x.example>', '"a.."@x.example'),
        ('FROM:<".a"@x.example>', '".a"@x.example'),
        ('FROM:<""@x.example>', '""@x.example'),
        ('FROM:<"a@b"@x.example>', '"a@b"@x.example'),
        ('FROM:<"a>b"@x.example>', '"a>b"@x.example'),
        ('FROM:<"<a>"@x.example>', '"<a>"@x.example'),
        ('FROM:<"a\\"b"@x.example>', '"a\\"b"@x.example'),
        ('FROM:<"a\\\\b"@x.example>', '"a\\\\b"@x.example'),
        ('FROM:<"a\\ b"@x.example>', '"a\\ b"@x.example'),
        ('FROM:<"a\\~"@x.example>', '"a\\~"@x.example'),
        ('FROM:<"(comment)"@x.example>', '"(comment)"@x.example'),
        ("FROM:<a@[127.0.0.1]>", "a@[127.0.0.1]"),
        ("FROM:<a@[0.0.0.0]>", "a@[0.0.0.0]"),
        ("FROM:<a@[255.255.255.255]>", "a@[255.255.255.255]"),
        ("FROM:<a@[010.001.0.1]>", "a@[010.001.0.1]"),
        ("FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]"),
        ("FROM:<a@[ipv6:::1]>", "a@[ipv6:::1]"),
        ("FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        ("FROM:<a@[IPv6:2001:DB8:0:0:0:0:0:1]>", "a@[IPv6:2001:DB8:0:0:0:0:0:1]"),
        ("FROM:<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]"),
        ("FROM:<a@[IPv6:1:2:3:4:5:6:1.2.3.4]>", "a@[IPv6:1:2:3:4:5:6:1.2.3.4]"),
        ("FROM:<a@[IPv6:::]>", "a@[IPv6:::]"),
        ("FROM:<a@[x-tag:content]>", "a@[x-tag:content]"),
        ("FROM:<a@[tag:!Z^~]>", "a@[tag:!Z^~]"),
        ("FROM:<a@[t:a:b:c]>", "a@[t:a:b:c]"),
        ("FROM:<@r1.example,@r2.example:a@x.example>", "a@x.example"),
        ("FROM:<@r1.example:a@x.example>", "a@x.example"),
        ('FROM:<@r1.example:"a b"@x.example>', '"a b"@x.example'),
        ("FROM:<@r1.example:a@[127.0.0.1]>", "a@[127.0.0.1]"),
        (f"FROM:<a@{DOMAIN_255}>", f"a@{DOMAIN_255}"),
        (f"FROM:<a@{LABEL_63}.example>", f"a@{LABEL_63}.example"),
        (f"FROM:<{'l' * 300}@b.example>", f"{'l' * 300}@b.example"),  # no 64 limit here
        # Without angle brackets (COMPAT D9, as aiosmtpd and Postfix accept).
        ("FROM:a@b.example", "a@b.example"),
        ("FROM: a@b.example", "a@b.example"),
        ("FROM:@r.example:a@b.example", "a@b.example"),
        ('FROM:"a b"@x.example', '"a b"@x.example'),
        ("FROM:a@[127.0.0.1]", "a@[127.0.0.1]"),
    ],
)
def test_mail_from_accepts_rfc5321_paths(arg: str, address: str) -> None:
    result = parse_mail_from(arg, utf8=False)
    assert result == PathArgument(address, (), False)


@pytest.mark.parametrize(
    ("arg", "params"),
    [
        ("FROM:<a@b.example> SIZE=100", (("SIZE", "100"),)),
        (
            "from: <a@b.example> SIZE=100 BODY=8BITMIME",
            (("SIZE", "100"), ("BODY", "8BITMIME")),
        ),
        ("FROM:<a@b.example> SMTPUTF8", (("SMTPUTF8", None),)),
        ("FROM:<a@b.example> smtputf8", (("SMTPUTF8", None),)),
        ("FROM:<a@b.example> body=8bitmime", (("BODY", "8bitmime"),)),
        ("FROM:<a@b.example> ENVID=QQ314159", (("ENVID", "QQ314159"),)),
        ("FROM:<a@b.example> X-Foo=a+b/c", (("X-FOO", "a+b/c"),)),
        ("FROM:<a@b.example> 1X=y", (("1X", "y"),)),
        ("FROM:<a@b.example> X--=y", (("X--", "y"),)),
        ("FROM:<a@b.example> AUTH=<>", (("AUTH", "<>"),)),
        ("FROM:<a@b.example> AUTH=<a@b.example>", (("AUTH", "<a@b.example>"),)),
        ("FROM:<a@b.example> V=!~", (("V", "!~"),)),
        ("FROM:<a@b.example>  SIZE=1", (("SIZE", "1"),)),
        ("FROM:<a@b.example>\tSIZE=1", (("SIZE", "1"),)),
        ("FROM:<a@b.example> \t SIZE=1 \t BODY=7BIT", (("SIZE", "1"), ("BODY", "7BIT"))),
        ("FROM:<a@b.example> SIZE=1 ", (("SIZE", "1"),)),
        ("FROM:<a@b.example> ", ()),
        ("FROM:<a@b.example>\t", ()),
        ("FROM:<a@b.example> SIZE=1 SIZE=2", (("SIZE", "1"), ("SIZE", "2"))),
        ("FROM:<> SIZE=1", (("SIZE", "1"),)),
        ("FROM:a@b.example SIZE=1", (("SIZE", "1"),)),
        ('FROM:"a b"@x.example SIZE=1', (("SIZE", "1"),)),
        ('FROM:<"x"@y.example> A B C', (("A", None), ("B", None), ("C", None))),
    ],
)
def test_mail_from_returns_parameters_in_order(
    arg: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    assert parse_mail_from(arg, utf8=False).params == params


# --- MAIL FROM: refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        # No FROM:, wrong word, no address.
        ("", SYNTAX),
        ("<a@b.example>", SYNTAX),
        ("FROM", SYNTAX),
        ("FROM<a@b.example>", SYNTAX),
        ("FROM :<a@b.example>", SYNTAX),
        ("FROM; <a@b.example>", SYNTAX),
        (" FROM:<a@b.example>", SYNTAX),
        ("TO:<a@b.example>", SYNTAX),
        ("FRM:<a@b.example>", SYNTAX),
        ("FROM:", SYNTAX),
        ("FROM: ", SYNTAX),
        ("FROM:\t", SYNTAX),
        ("\u212aFROM:<a@b.example>", SYNTAX),
        # Junk glued to the path.
        ("FROM:<a@b.example>x", SYNTAX),
        ("FROM:<a@b.example>SIZE=1", SYNTAX),
        ('FROM:<a@b.example>"', SYNTAX),
        ("FROM:<>x", SYNTAX),
        # Brackets.
        ("FROM:<", UNBALANCED),
        ("FROM: <", UNBALANCED),
        ("FROM:<a@b.example", UNBALANCED),
        ("FROM:<a@b.example SIZE=1", UNBALANCED),
        ("FROM:a@b.example>", UNBALANCED),
        ("FROM:>", UNBALANCED),
        ("FROM:<<a@b.example>>", UNBALANCED),
        ("FROM:<a@b.example>>", UNBALANCED),
        ("FROM:<a<b@c.example>", UNBALANCED),
        ("FROM:<a@b.example><c@d.example>", UNBALANCED),
        ("FROM:a@b<c.example>", UNBALANCED),
        ("FROM:<<>", UNBALANCED),
        ("FROM:<>>", UNBALANCED),
        # Dot-string.
        ("FROM:<a..b@x.example>", BAD_MAILBOX),
        ("FROM:<.a@x.example>", BAD_MAILBOX),
        ("FROM:<a.@x.example>", BAD_MAILBOX),
        ("FROM:<.@x.example>", BAD_MAILBOX),
        ("FROM:<a b@x.example>", BAD_MAILBOX),
        ("FROM:<a(b)@x.example>", BAD_MAILBOX),
        ("FROM:<a,b@x.example>", BAD_MAILBOX),
        ("FROM:<a;b@x.example>", BAD_MAILBOX),
        ("FROM:<a:b@x.example>", BAD_MAILBOX),
        ("FROM:<a[b@x.example>", BAD_MAILBOX),
        ("FROM:<a\\b@x.example>", BAD_MAILBOX),
        ("FROM:<@x.example>", BAD_MAILBOX),
        ("FROM:< >", BAD_MAILBOX),
        ("FROM:< a@x.example>", BAD_MAILBOX),
        ("FROM:<a@x.example >", BAD_MAILBOX),
        ("FROM:<a\x0bb@x.example>", BAD_MAILBOX),
        ("FROM:<a\x7fb@x.example>", BAD_MAILBOX),
        # Quoted-string.
        ('FROM:<"abc@x.example>', BAD_MAILBOX),
        ('FROM:<"a"b"@x.example>', BAD_MAILBOX),
        ('FROM:<"a"."b"@x.example>', BAD_MAILBOX),
        ('FROM:<a"b"@x.example>', BAD_MAILBOX),
        ('FROM:<"a"b@x.example>', BAD_MAILBOX),
        ('FROM:<"a\tb"@x.example>', BAD_MAILBOX),
        ('FROM:<"a\\\tb"@x.example>', BAD_MAILBOX),
        ('FROM:<"a\x7f"@x.example>', BAD_MAILBOX),
        ('FROM:"ab', BAD_MAILBOX),
        ('FROM:"ab@x.example SIZE=1', BAD_MAILBOX),
        ('FROM:a"b', BAD_MAILBOX),
        # Domainless: only RCPT has the Postmaster exception.
        ("FROM:<postmaster>", BAD_MAILBOX),
        ("FROM:<a>", BAD_MAILBOX),
        ("FROM:postmaster", BAD_MAILBOX),
        ("FROM:<a@>", BAD_MAILBOX),
        ('FROM:<"a">', BAD_MAILBOX),
        # Domain.
        ("FROM:<a@-x.example>", BAD_MAILBOX),
        ("FROM:<a@x-.example>", BAD_MAILBOX),
        ("FROM:<a@x.example->", BAD_MAILBOX),
        ("FROM:<a@x..example>", BAD_MAILBOX),
        ("FROM:<a@.x.example>", BAD_MAILBOX),
        ("FROM:<a@x.example.>", BAD_MAILBOX),
        ("FROM:<a@.>", BAD_MAILBOX),
        ("FROM:<a@x_y.example>", BAD_MAILBOX),
        ("FROM:<a@x y.example>", BAD_MAILBOX),
        ("FROM:<a@b@c.example>", BAD_MAILBOX),
        ("FROM:<a@x.example,>", BAD_MAILBOX),
        ("FROM:<a@(x).example>", BAD_MAILBOX),
        (f"FROM:<a@{'a' * 64}.example>", BAD_MAILBOX),
        (f"FROM:<a@{DOMAIN_256}>", BAD_MAILBOX),
        (f"FROM:<a@{'a.' * 127}ab>", BAD_MAILBOX),  # 256 octets of short labels
        ("FROM:a@-x.example", BAD_MAILBOX),
        # Address literals.
        ("FROM:<a@[300.1.1.1]>", BAD_MAILBOX),
        ("FROM:<a@[256.0.0.0]>", BAD_MAILBOX),
        ("FROM:<a@[1.2.3]>", BAD_MAILBOX),
        ("FROM:<a@[1.2.3.4.5]>", BAD_MAILBOX),
        ("FROM:<a@[1.2.3.]>", BAD_MAILBOX),
        ("FROM:<a@[1234.1.1.1]>", BAD_MAILBOX),
        ("FROM:<a@[1.2.3.4]x>", BAD_MAILBOX),
        ("FROM:<a@[1.2.3.4>", BAD_MAILBOX),
        ("FROM:<a@1.2.3.4]>", BAD_MAILBOX),
        ("FROM:<a@[]>", BAD_MAILBOX),
        ("FROM:<a@[ 1.2.3.4]>", BAD_MAILBOX),
        ("FROM:<a@[\u0661.2.3.4]>", NON_ASCII),  # ARABIC-INDIC DIGIT ONE, not a digit here
        ("FROM:<a@[IPv6:]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:1.2.3.4]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:::g]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:1::2::3]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:fe80::1%eth0]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6:::ffff:300.1.1.1]>", BAD_MAILBOX),
        ("FROM:<a@[IPv6: ::1]>", BAD_MAILBOX),
        ("FROM:<a@[tag:]>", BAD_MAILBOX),
        ("FROM:<a@[tag-:x]>", BAD_MAILBOX),
        ("FROM:<a@[:x]>", BAD_MAILBOX),
        ("FROM:<a@[tag:a b]>", BAD_MAILBOX),
        ("FROM:<a@[tag:a[b]>", BAD_MAILBOX),
        ("FROM:<a@[tag:a\\b]>", BAD_MAILBOX),
        ("FROM:<a@[t_g:x]>", BAD_MAILBOX),
        ("FROM:<a@[127.0.0.1].example>", BAD_MAILBOX),
        # Source routes.
        ("FROM:<@:a@x.example>", BAD_MAILBOX),
        ("FROM:<@r.example a@x.example>", BAD_MAILBOX),
        ("FROM:<@r.example,a@x.example>", BAD_MAILBOX),
        ("FROM:<@r.example,:a@x.example>", BAD_MAILBOX),
        ("FROM:<@r.example,,@s.example:a@x.example>", BAD_MAILBOX),
        ("FROM:<@-r.example:a@x.example>", BAD_MAILBOX),
        ("FROM:<@[127.0.0.1]:a@x.example>", BAD_MAILBOX),
        ("FROM:<@r.example:>", BAD_MAILBOX),
        ("FROM:<@r.example:postmaster>", BAD_MAILBOX),
        ("FROM:<@r.example:@s.example:a@x.example>", BAD_MAILBOX),
        # Parameters.
        ("FROM:<a@b.example> =x", PARAM_SYNTAX),
        ("FROM:<a@b.example> SIZE=", PARAM_SYNTAX),
        ("FROM:<a@b.example> SIZE==1", PARAM_SYNTAX),
        ("FROM:<a@b.example> SIZE=1=2", PARAM_SYNTAX),
        ("FROM:<a@b.example> -X", PARAM_SYNTAX),
        ("FROM:<a@b.example> X_Y", PARAM_SYNTAX),
        ("FROM:<a@b.example> X.Y=1", PARAM_SYNTAX),
        ("FROM:<a@b.example> <c@d.example>", PARAM_SYNTAX),
        ("FROM:<a@b.example> SIZE=1\x0bBODY=7BIT", PARAM_SYNTAX),
        ("FROM:<a@b.example> X=\x7f", PARAM_SYNTAX),
        ("FROM:<a@b.example> X=\x01", PARAM_SYNTAX),
        ("FROM:<a@b.example> X=ä", PARAM_SYNTAX),
        ("FROM:<a@b.example> Ä=x", PARAM_SYNTAX),
        ("FROM:<a@b.example> \u212a=1", PARAM_SYNTAX),
        ("FROM:a@b.example SIZE=", PARAM_SYNTAX),
    ],
)
def test_mail_from_refuses_with_the_kind_that_picks_the_reply(arg: str, kind: GrammarKind) -> None:
    assert kind_of(lambda: parse_mail_from(arg, utf8=False)) is kind


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        # Structure is judged before the non-ASCII check, which precedes the mailbox checks.
        ("FROM:<jö@exämple.de", UNBALANCED),
        ("FROM:<jö@x.example>junk", SYNTAX),
        ("FROM:<jö..x@x.example>", NON_ASCII),
        ("FROM:<@rö.example:a@x.example>", NON_ASCII),
        # A valid mailbox but bad parameters: the mailbox is checked first.
        ("FROM:<a..b@x.example> =x", BAD_MAILBOX),
        ("FROM:<jö@x.example> =x", NON_ASCII),
    ],
)
def test_errors_are_reported_in_a_fixed_order(arg: str, kind: GrammarKind) -> None:
    assert kind_of(lambda: parse_mail_from(arg, utf8=False)) is kind


# --- RCPT TO: -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("TO:<a@b.example>", "a@b.example"),
        ("to:<a@b.example>", "a@b.example"),
        ("To: <a@b.example>", "a@b.example"),
        ("TO:\t<a@b.example>", "a@b.example"),
        ("TO:<postmaster>", "postmaster"),
        ("TO:<Postmaster>", "Postmaster"),
        ("TO:<POSTMASTER>", "POSTMASTER"),
        ("TO: <PostMaster>", "PostMaster"),
        ("TO:postmaster", "postmaster"),
        ("TO:<postmaster@b.example>", "postmaster@b.example"),
        ("TO:<@r.example,@s.example:a@b.example>", "a@b.example"),
        ('TO:<"a b"@x.example>', '"a b"@x.example'),
        ("TO:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        ("TO:a@b.example", "a@b.example"),
    ],
)
def test_rcpt_to_accepts_forward_paths(arg: str, address: str) -> None:
    assert parse_rcpt_to(arg, utf8=False) == PathArgument(address, (), False)


def test_rcpt_to_returns_parameters() -> None:
    result = parse_rcpt_to("TO:<a@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b", utf8=False)
    assert result.params == (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;a@b"))


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        ("TO:<>", NULL_PATH),
        ("TO: <>", NULL_PATH),
        ("TO:<> NOTIFY=NEVER", NULL_PATH),
        ("FROM:<a@b.example>", SYNTAX),
        ("TO", SYNTAX),
        ("TO:", SYNTAX),
        ("TO: ", SYNTAX),
        ("T O:<a@b.example>", SYNTAX),
        ("TO:<a@b.example>x", SYNTAX),
        ("TO:<", UNBALANCED),
        ("TO:<a@b.example", UNBALANCED),
        ("TO:a@b.example>", UNBALANCED),
        ("TO:<postmaster", UNBALANCED),
        ("TO:<<postmaster>>", UNBALANCED),
        ("TO:<a..b@x.example>", BAD_MAILBOX),
        ("TO:<postmistress>", BAD_MAILBOX),
        ("TO:<postmaster.>", BAD_MAILBOX),
        ('TO:<"postmaster">', BAD_MAILBOX),
        ("TO:< postmaster>", BAD_MAILBOX),
        ("TO:<@r.example:postmaster>", BAD_MAILBOX),
        ("TO:<a@[300.1.1.1]>", BAD_MAILBOX),
        ("TO:<jö@x.example>", NON_ASCII),
        ("TO:<a@b.example> NOTIFY=", PARAM_SYNTAX),
    ],
)
def test_rcpt_to_refuses_with_the_kind_that_picks_the_reply(arg: str, kind: GrammarKind) -> None:
    assert kind_of(lambda: parse_rcpt_to(arg, utf8=False)) is kind


# --- RFC 6531: UTF-8 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("FROM:<jö@exämple.de>", "jö@exämple.de"),
        ("FROM:<jö@example.de>", "jö@example.de"),
        ("FROM:<jo@exämple.de>", "jo@exämple.de"),
        ("FROM:<用户@例子.广告>", "用户@例子.广告"),
        ("FROM:<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή@παράδειγμα.δοκιμή"),
        ("FROM:<квіточка@пошта.укр>", "квіточка@пошта.укр"),
        ("FROM:<अजय@डाटा.भारत>", "अजय@डाटा.भारत"),  # combining vowel signs in the labels
        ("FROM:<a.ö.b@x.example>", "a.ö.b@x.example"),
        ("FROM:<😀@x.example>", "😀@x.example"),
        ('FROM:<"jö smith"@x.example>', '"jö smith"@x.example'),
        ("FROM:<jö@[127.0.0.1]>", "jö@[127.0.0.1]"),
        ("FROM:<@rö.example:jö@x.example>", "jö@x.example"),
        ("FROM:jö@exämple.de", "jö@exämple.de"),
        ("FROM:<a@ö-ö.example>", "a@ö-ö.example"),
        ("FROM:<a@x-ö.example>", "a@x-ö.example"),
        ("FROM:<a@b.example>", "a@b.example"),
        ("FROM:<>", "<>"),
    ],
)
def test_utf8_addresses_are_accepted_when_smtputf8_applies(arg: str, address: str) -> None:
    result = parse_mail_from(arg, utf8=True)
    assert result.address == address
    assert result.has_non_ascii == (not address.isascii())


def test_route_with_non_ascii_is_dropped_and_not_counted() -> None:
    result = parse_mail_from("FROM:<@rö.example:a@x.example>", utf8=True)
    assert result == PathArgument("a@x.example", (), False)


@pytest.mark.parametrize(
    "arg",
    [
        "FROM:<jö@exämple.de>",
        "FROM:<jö@example.de>",
        "FROM:<jo@exämple.de>",
        'FROM:<"jö"@x.example>',
        "FROM:<@rö.example:a@x.example>",
        "FROM:jö@exämple.de",
        "FROM:<a@[IPv6:::1]\u00a0>",
        "FROM:<a\u200b@x.example>",
    ],
)
def test_utf8_addresses_without_smtputf8_are_non_ascii(arg: str) -> None:
    assert kind_of(lambda: parse_mail_from(arg, utf8=False)) is NON_ASCII
    assert kind_of(lambda: parse_rcpt_to("TO:" + arg[5:], utf8=False)) is NON_ASCII


@pytest.mark.parametrize(
    "arg",
    [
        "FROM:<jö..x@x.example>",
        "FROM:<a@exämple..de>",
        "FROM:<a@-ö.example>",
        "FROM:<a@ö-.example>",
        "FROM:<a@x\u3002example>",  # IDEOGRAPHIC FULL STOP is not a label separator here
        "FROM:<a@x\uff0eexample>",  # FULLWIDTH FULL STOP
        "FROM:<a@ex\u00a0ample.de>",  # NO-BREAK SPACE
        "FROM:<a@ex\u2028ample.de>",  # LINE SEPARATOR
        "FROM:<a@ex\u00a9ample.de>",  # COPYRIGHT SIGN, a symbol
        "FROM:<a@😀.example>",
        f"FROM:<a@{'ö' * 32}.example>",  # 64 octets in UTF-8, though only 32 characters
        f"FROM:<a@{'.'.join(['ö' * 31] * 4)}.example>",  # over 255 octets
        "FROM:<a@[ö]>",
        "FROM:<a@[tag:ö]>",
        "FROM:<a\ud800@x.example>",  # a lone surrogate is not UTF-8
        "FROM:<a@x\udfff.example>",
        'FROM:<"a\ud800"@x.example>',
        'FROM:<"a\\ö"@x.example>',  # quoted-pairSMTP is ASCII only
        "FROM:<jö@exämple.de.>",
    ],
)
def test_utf8_mailboxes_still_follow_the_grammar(arg: str) -> None:
    assert kind_of(lambda: parse_mail_from(arg, utf8=True)) is BAD_MAILBOX


def test_utf8_allows_non_ascii_parameter_values_only() -> None:
    result = parse_mail_from("FROM:<jö@x.example> SMTPUTF8 ENVID=ö1", utf8=True)
    assert result.params == (("SMTPUTF8", None), ("ENVID", "ö1"))
    assert kind_of(lambda: parse_mail_from("FROM:<a@x.example> Ö=1", utf8=True)) is PARAM_SYNTAX
    assert kind_of(lambda: parse_mail_from("FROM:<a@x.example> X=a\u00a0", utf8=False)) is (
        PARAM_SYNTAX
    )


def test_utf8_domain_of_exactly_255_octets_is_accepted() -> None:
    label = "ö" * 31 + "a"  # 63 octets
    domain = ".".join([label] * 3 + ["b" * 63])  # 3 * 63 + 63 + 3 dots = 255 octets
    assert len(domain.encode()) == 255
    assert parse_mail_from(f"FROM:<a@{domain}>", utf8=True).address == f"a@{domain}"
    assert kind_of(lambda: parse_mail_from(f"FROM:<a@{domain}c>", utf8=True)) is BAD_MAILBOX


# --- Values and helpers -------------------------------------------------------------------


def test_grammar_error_carries_kind_and_detail() -> None:
    with pytest.raises(GrammarError) as info:
        parse_mail_from("FROM:<a@b.example", utf8=False)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.kind is UNBALANCED
    assert error.detail
    assert str(error) == error.detail


def test_path_argument_is_frozen() -> None:
    result = parse_mail_from("FROM:<a@b.example>", utf8=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.address = "x@y.example"  # type: ignore[misc]  # checking the runtime guard


def test_every_kind_has_a_distinct_value() -> None:
    assert len({kind.value for kind in GrammarKind}) == len(GrammarKind) == 6


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("SIZE", True),
        ("size", True),
        ("8BITMIME", True),
        ("X-FOO", True),
        ("X--", True),
        ("A", True),
        ("1", True),
        ("", False),
        ("-X", False),
        ("X_Y", False),
        ("X Y", False),
        ("X=", False),
        ("SIZE\n", False),
        ("Ä", False),
        ("\u212a", False),  # KELVIN SIGN folds to "k" but is not ALPHA
        ("\uff21", False),  # FULLWIDTH LATIN CAPITAL LETTER A
    ],
)
def test_is_esmtp_keyword_follows_rfc5321(word: str, expected: bool) -> None:
    assert is_esmtp_keyword(word) is expected


# --- VRFY -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@b.example>", "a@b.example"),
        ("a@b.example", "a@b.example"),
        (" a@b.example", "a@b.example"),
        ("a@b.example \t", "a@b.example"),
        ("smith", "smith"),
        ("Smith", "Smith"),
        ("john.smith", "john.smith"),
        ("postmaster", "postmaster"),
        ("<postmaster>", "postmaster"),
        ("<smith>", "smith"),
        ('"Fred Smith"', '"Fred Smith"'),
        ('<"Fred Smith">', '"Fred Smith"'),
        ('"Fred Smith"@b.example', '"Fred Smith"@b.example'),
        ("<@r.example:a@b.example>", "a@b.example"),
        ("a@[127.0.0.1]", "a@[127.0.0.1]"),
        ('"a>b"', '"a>b"'),
        ('<"a>b"@x.example>', '"a>b"@x.example'),
    ],
)
def test_vrfy_accepts_a_user_name_or_a_mailbox(arg: str, expected: str) -> None:
    assert parse_vrfy(arg, utf8=False) == expected


@pytest.mark.parametrize(
    "arg",
    [
        "",
        " ",
        "\t",
        "<>",
        "<",
        ">",
        "<a@b.example",
        "a@b.example>",
        "<<a@b.example>>",
        "<a@b.example>>",
        "<a@b.example> x",
        "a..b@x.example",
        "a@b..example",
        ".smith",
        "smith.",
        "John Smith",
        '"Fred Smith',
        '<"Fred Smith>',
        "a@",
        "@b.example",
        "<@r.example:>",
        "<@-r.example:a@b.example>",
        "jö",
        "<jö@exämple.de>",
        "a\x00b",
    ],
)
def test_vrfy_returns_none_when_unparsable(arg: str) -> None:
    assert parse_vrfy(arg, utf8=False) is None


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("jö", "jö"),
        ("<jö@exämple.de>", "jö@exämple.de"),
        ('"jö smith"', '"jö smith"'),
        ("smith", "smith"),
    ],
)
def test_vrfy_accepts_utf8_when_smtputf8_applies(arg: str, expected: str) -> None:
    assert parse_vrfy(arg, utf8=True) == expected


# --- Robustness ---------------------------------------------------------------------------

_N = 50_000
_HOSTILE = [
    "FROM:<" + "a" * _N,
    "FROM:<" + "a." * _N,
    'FROM:<"' + "a" * _N,
    'FROM:<"' + "\\" * _N,
    "FROM:<" + '"a' * _N,
    "FROM:<a@" + "a" * _N + ">",
    "FROM:<a@" + "a-" * _N + ">",
    "FROM:<a@" + "a." * _N + ">",
    "FROM:<a@" + "ö-" * _N + "->",
    "FROM:<" + "@a," * _N + ">",
    "FROM:<a@[" + "a-" * _N + "]>",
    "FROM:<a@[IPv6:" + ":" * _N + "]>",
    "FROM:<a@b.example> " + "A" * _N + "=",
    "FROM:<a@b.example>" + " A" * _N,
    "FROM:" + "a" * _N + ">",
    "FROM:" + "<" * _N,
    "FROM:" + ">" * _N,
    "FROM:" + " " * _N + "x",
]


@pytest.mark.parametrize("arg", _HOSTILE, ids=range(len(_HOSTILE)))
def test_hostile_long_arguments_are_parsed_in_linear_time(arg: str) -> None:
    # A catastrophic regex backtrack takes minutes here; linear parsing takes milliseconds.
    start = time.perf_counter()
    for utf8 in (False, True):
        for call in (parse_mail_from, parse_rcpt_to):
            try:
                call(arg, utf8=utf8)
            except GrammarError:
                pass
        parse_vrfy(arg[5:], utf8=utf8)
    assert time.perf_counter() - start < 2.0


_SMTP_CHARS = st.sampled_from(
    [*'<>"\\@.:,[]-= \t!#aZ09_()', "IPv6:", "\x00", "\r", "\n", "ö", "\ud800", "\u212a"]
)
_PREFIXES = st.sampled_from(["FROM:", "TO:", "from: ", "To:\t", "FROM:<", "TO:<", ""])
_ANY_ARGUMENT = st.one_of(
    st.text(),
    st.builds(lambda p, xs: p + "".join(xs), _PREFIXES, st.lists(_SMTP_CHARS, max_size=40)),
)


@given(arg=_ANY_ARGUMENT, utf8=st.booleans())
def test_any_text_returns_or_raises_grammar_error_deterministically(arg: str, utf8: bool) -> None:
    outcomes: list[object] = []
    for _ in range(2):
        for call in (parse_mail_from, parse_rcpt_to):
            try:
                outcomes.append(call(arg, utf8=utf8))
            except GrammarError as error:
                outcomes.append((error.kind, error.detail))
        outcomes.append(parse_vrfy(arg, utf8=utf8))
    assert outcomes[:3] == outcomes[3:]
    for outcome in outcomes[:2]:
        if isinstance(outcome, PathArgument):
            assert outcome.has_non_ascii == (not outcome.address.isascii())
            assert utf8 or outcome.address.isascii()
            assert all(is_esmtp_keyword(key) and key == key.upper() for key, _ in outcome.params)


_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
_ATOM = st.text(alphabet=_ATEXT, min_size=1, max_size=8)
_DOT_STRING = st.lists(_ATOM, min_size=1, max_size=4).map(".".join)
_QUOTED = st.lists(
    st.one_of(
        st.sampled_from(list(" !#aZ[]~()<>@,;:.")),
        st.sampled_from(['\\"', "\\\\", "\\ ", "\\a"]),
    ),
    max_size=8,
).map(lambda parts: '"' + "".join(parts) + '"')
_LABEL = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_MAILBOX = st.builds(
    lambda local, domain: f"{local}@{domain}", st.one_of(_DOT_STRING, _QUOTED), _DOMAIN
)
_PARAM = st.tuples(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True),
    st.one_of(st.none(), st.from_regex(r"[!-<>-~]{1,10}", fullmatch=True)),
)


@given(
    mailbox=_MAILBOX, params=st.lists(_PARAM, max_size=4), space=st.sampled_from(["", " ", "\t"])
)
def test_valid_paths_round_trip(
    mailbox: str, params: list[tuple[str, str | None]], space: str
) -> None:
    text = "".join(f" {key}" if value is None else f" {key}={value}" for key, value in params)
    expected = tuple((key.upper(), value) for key, value in params)
    for utf8 in (False, True):
        assert parse_mail_from(f"FROM:{space}<{mailbox}>{text}", utf8=utf8) == PathArgument(
            mailbox, expected, False
        )
        assert parse_rcpt_to(f"TO:{space}<@relay.example:{mailbox}>{text}", utf8=utf8).address == (
            mailbox
        )
        assert parse_vrfy(f"<{mailbox}>", utf8=utf8) == mailbox
