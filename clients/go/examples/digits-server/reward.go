package main

import (
	"strings"
	"unicode"
)

// rewards of a reply: both of the Python environment's rubric functions.
func rewards(reply string) map[string]float64 {
	return map[string]float64{"digits": digits(reply), "number": number(reply)}
}

// digits is the share of the reply's non-whitespace characters that are digits (0 for an empty
// reply), counted in Unicode characters as Python's str does.
func digits(reply string) float64 {
	chars, count := 0, 0
	for _, r := range reply {
		if isSpace(r) {
			continue
		}
		chars++
		if isDigit(r) {
			count++
		}
	}
	if chars == 0 {
		return 0
	}
	return float64(count) / float64(chars)
}

// number is 1 when the reply, stripped of whitespace, is digits after leading minus signs
// (Python's text.strip().lstrip("-").isdigit()), else 0.
func number(reply string) float64 {
	text := strings.TrimLeft(strings.TrimFunc(reply, isSpace), "-")
	if text == "" {
		return 0
	}
	for _, r := range text {
		if !isDigit(r) {
			return 0
		}
	}
	return 1
}

// isSpace is Python's str.isspace: Go's white space plus the separators U+001C..U+001F.
func isSpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

// isDigit is Python's str.isdigit (Unicode 14, Python 3.11): decimal digits (Nd) and the other
// characters of numeric type Digit (superscripts, subscripts, circled digits, ...).
func isDigit(r rune) bool { return unicode.IsDigit(r) || unicode.Is(otherDigits, r) }

// otherDigits are the characters Python's isdigit accepts that Go's unicode.IsDigit does not:
// Numeric_Type=Digit characters outside Nd, and the Tangsa digits (Nd since Unicode 14; Go 1.19
// has Unicode 13).
var otherDigits = &unicode.RangeTable{
	R16: []unicode.Range16{
		{Lo: 0x00b2, Hi: 0x00b3, Stride: 1},
		{Lo: 0x00b9, Hi: 0x00b9, Stride: 1},
		{Lo: 0x1369, Hi: 0x1371, Stride: 1},
		{Lo: 0x19da, Hi: 0x19da, Stride: 1},
		{Lo: 0x2070, Hi: 0x2070, Stride: 1},
		{Lo: 0x2074, Hi: 0x2079, Stride: 1},
		{Lo: 0x2080, Hi: 0x2089, Stride: 1},
		{Lo: 0x2460, Hi: 0x2468, Stride: 1},
		{Lo: 0x2474, Hi: 0x247c, Stride: 1},
		{Lo: 0x2488, Hi: 0x2490, Stride: 1},
		{Lo: 0x24ea, Hi: 0x24ea, Stride: 1},
		{Lo: 0x24f5, Hi: 0x24fd, Stride: 1},
		{Lo: 0x24ff, Hi: 0x24ff, Stride: 1},
		{Lo: 0x2776, Hi: 0x277e, Stride: 1},
		{Lo: 0x2780, Hi: 0x2788, Stride: 1},
		{Lo: 0x278a, Hi: 0x2792, Stride: 1},
	},
	R32: []unicode.Range32{
		{Lo: 0x10a40, Hi: 0x10a43, Stride: 1},
		{Lo: 0x10e60, Hi: 0x10e68, Stride: 1},
		{Lo: 0x11052, Hi: 0x1105a, Stride: 1},
		{Lo: 0x16ac0, Hi: 0x16ac9, Stride: 1},
		{Lo: 0x1f100, Hi: 0x1f10a, Stride: 1},
	},
	LatinOffset: 2,
}
