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

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// yamlDocuments splits a YAML stream at its "---" separators.
func yamlDocuments(raw []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("document %d: not valid YAML: %w", len(docs)+1, err)
		}
		docs = append(docs, doc)
	}
}

var (
	topLevelKey = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*:`)
	itemStart   = regexp.MustCompile(`^( *)-( |$)`)
)

// splitYAMLList cuts a List document in kubectl's block style
//
//	apiVersion: v1
//	items:
//	- apiVersion: v1
//	  kind: Pod
//	  ...
//	kind: List
//
// into the YAML of each item, without parsing the whole document: a YAML
// parser holds the entire tree of a 200 MB dump, tens of times its size.
// Anything it does not recognise (flow style, a comment at column 0, a kind
// that is not a list) returns false, and the caller parses the document
// whole, as before.
func splitYAMLList(doc []byte) ([][]byte, bool) {
	lines := bytes.SplitAfter(doc, []byte("\n"))
	var header [][]byte
	i := 0
	for ; i < len(lines); i++ {
		line := lines[i]
		if isBlank(line) {
			continue
		}
		if !topLevelKey.Match(line) {
			return nil, false
		}
		if bytes.Equal(bytes.TrimRight(line, " \r\n"), []byte("items:")) {
			break
		}
		header = append(header, line)
	}
	if i == len(lines) {
		return nil, false
	}
	items, rest, ok := cutItems(lines[i+1:])
	if !ok {
		return nil, false
	}
	for _, line := range rest {
		if !isBlank(line) && !topLevelKey.Match(line) && line[0] != ' ' {
			return nil, false
		}
	}
	var meta typeMeta
	js, err := sigsyaml.YAMLToJSON(bytes.Join(append(header, rest...), nil))
	if err != nil || json.Unmarshal(js, &meta) != nil || !(meta.Kind == "List" || isListKind(meta.Kind)) {
		return nil, false
	}
	return items, true
}

// cutItems reads the block sequence that starts lines: each item's lines,
// dedented, and the lines after the sequence.
func cutItems(lines [][]byte) (items [][]byte, rest [][]byte, ok bool) {
	dash := -1
	var current []byte
	for i, line := range lines {
		if isBlank(line) {
			continue
		}
		indent := len(line) - len(bytes.TrimLeft(line, " "))
		m := itemStart.FindSubmatch(line)
		switch {
		case dash < 0 && m == nil:
			return nil, nil, false // "items:" followed by something other than a sequence
		case m != nil && (dash < 0 || len(m[1]) == dash):
			if dash < 0 {
				dash = len(m[1])
			}
			if current != nil {
				items = append(items, current)
			}
			current = append(bytes.Repeat([]byte(" "), dash+2), line[min(dash+2, len(line)):]...)
			current = dedent(current, dash+2)
		case indent > dash:
			current = append(current, dedent(line, dash+2)...)
		default:
			if current != nil {
				items = append(items, current)
			}
			return items, lines[i:], true
		}
	}
	if current != nil {
		items = append(items, current)
	}
	return items, nil, dash >= 0
}

func dedent(line []byte, n int) []byte {
	indent := len(line) - len(bytes.TrimLeft(line, " "))
	return line[min(indent, n):]
}

func isBlank(line []byte) bool { return len(bytes.TrimSpace(line)) == 0 }
