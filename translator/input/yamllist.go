package input

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"

	sigsyaml "sigs.k8s.io/yaml"
)

var (
	topLevelKey = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*:`)
	itemStart   = regexp.MustCompile(`^( *)-( |$)`)
)

// listScanner recognises, line by line, a List document in kubectl's block
// style
//
//	apiVersion: v1
//	items:
//	- apiVersion: v1
//	  kind: Pod
//	  ...
//	kind: List
//
// and hands over the YAML of each item (dedented) as soon as it is complete,
// without ever holding the document: a YAML parser holds the entire tree of
// a 200 MB dump, tens of times its size. Anything it does not recognise
// (flow style, a comment at column 0, a kind that is not a list) makes end
// report false, and the caller parses the document whole.
type listScanner struct {
	onItem func(item []byte) error // nil: only recognise

	phase        int // scanHeader, scanItems, scanRest, scanFailed
	header, rest []byte
	dash         int    // the items' dash column, -1 before the first
	current      []byte // the item being read (only with onItem)
	seenItem     bool
}

const (
	scanHeader = iota
	scanItems
	scanRest
	scanFailed
)

func newListScanner(onItem func([]byte) error) *listScanner {
	return &listScanner{onItem: onItem, dash: -1}
}

// line takes the document's next line (with its newline); the slice is
// not kept.
func (s *listScanner) line(line []byte) error {
	if s.phase == scanFailed || isBlank(line) {
		return nil
	}
	switch s.phase {
	case scanHeader:
		switch {
		case !topLevelKey.Match(line):
			s.phase = scanFailed
		case bytes.Equal(bytes.TrimRight(line, " \r\n"), []byte("items:")):
			s.phase = scanItems
		default:
			s.header = append(s.header, line...)
		}
		return nil
	case scanItems:
		return s.itemLine(line)
	default: // scanRest
		if !topLevelKey.Match(line) && line[0] != ' ' {
			s.phase = scanFailed
			return nil
		}
		s.rest = append(s.rest, line...)
		return nil
	}
}

// itemLine reads a line of the block sequence after "items:".
func (s *listScanner) itemLine(line []byte) error {
	indent := len(line) - len(bytes.TrimLeft(line, " "))
	m := itemStart.FindSubmatch(line)
	switch {
	case s.dash < 0 && m == nil:
		s.phase = scanFailed // "items:" followed by something other than a sequence
	case m != nil && (s.dash < 0 || len(m[1]) == s.dash):
		if s.dash < 0 {
			s.dash = len(m[1])
		}
		if err := s.flush(); err != nil {
			return err
		}
		s.seenItem = true
		if s.onItem != nil {
			s.current = append(s.current[:0], bytes.Repeat([]byte(" "), s.dash+2)...)
			s.current = append(s.current, line[min(s.dash+2, len(line)):]...)
			s.current = dedent(s.current, s.dash+2)
		}
	case indent > s.dash:
		if s.onItem != nil {
			s.current = append(s.current, dedent(line, s.dash+2)...)
		}
	default: // the sequence ended: the rest are top-level keys
		if err := s.flush(); err != nil {
			return err
		}
		s.phase = scanRest
		return s.line(line)
	}
	return nil
}

// flush hands over the item read so far.
func (s *listScanner) flush() error {
	if s.onItem == nil || !s.seenItem {
		return nil
	}
	item := s.current
	s.seenItem = false
	return s.onItem(item)
}

// end says whether the document was a List in kubectl's block style (every
// item then handed over).
func (s *listScanner) end() (bool, error) {
	if s.phase == scanFailed || s.phase == scanHeader || s.dash < 0 {
		return false, nil
	}
	if s.phase == scanItems {
		if err := s.flush(); err != nil {
			return false, err
		}
	}
	var meta typeMeta
	js, err := sigsyaml.YAMLToJSON(append(append([]byte(nil), s.header...), s.rest...))
	if err != nil || json.Unmarshal(js, &meta) != nil || !(meta.Kind == "List" || isListKind(meta.Kind)) {
		return false, nil
	}
	return true, nil
}

func dedent(line []byte, n int) []byte {
	indent := len(line) - len(bytes.TrimLeft(line, " "))
	return line[min(indent, n):]
}

func isBlank(line []byte) bool { return len(bytes.TrimSpace(line)) == 0 }

// lineReader reads lines of any length as the YAML reader does: each ends
// in "\n" ("\r\n" and a missing last newline included), in one reused
// buffer.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
}

// next returns the next line, valid until the next call; io.EOF after the
// last.
func (r *lineReader) next() ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		chunk, err := r.br.ReadSlice('\n')
		r.buf = append(r.buf, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(r.buf) == 0:
			return nil, io.EOF
		case err != nil && !errors.Is(err, io.EOF):
			return nil, err
		}
		r.buf = bytes.TrimSuffix(bytes.TrimSuffix(r.buf, []byte("\n")), []byte("\r"))
		return append(r.buf, '\n'), nil
	}
}

// eachYAMLDocument reads a YAML stream once, line by line: begin(n) starts
// document n (counted from 1), line feeds it, end closes it. Documents are
// split at "---" lines, as the YAML reader splits them; a separator may
// carry a comment, nothing else.
func eachYAMLDocument(r io.Reader, begin func(n int), line func([]byte) error, end func() error) error {
	lr := &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
	n, open := 0, false
	for {
		l, err := lr.next()
		if errors.Is(err, io.EOF) {
			if open {
				return end()
			}
			return nil
		}
		if err != nil {
			return err
		}
		if rest, ok := bytes.CutPrefix(l, []byte("---")); ok {
			if trimmed := bytes.TrimSpace(rest); len(trimmed) > 0 && trimmed[0] != '#' {
				return fmt.Errorf("document %d: not valid YAML: invalid Yaml document separator: %s", n+1, trimmed)
			}
			if open {
				if err := end(); err != nil {
					return err
				}
				open = false
			}
			continue
		}
		if !open {
			n, open = n+1, true
			begin(n)
		}
		if err := line(l); err != nil {
			return err
		}
	}
}
