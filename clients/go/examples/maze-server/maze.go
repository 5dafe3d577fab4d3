package main

import (
	"fmt"
	"strings"
)

// A maze is a grid of walls ('#') and open squares ('.'), with a start 'S' and a goal 'G'.
type maze struct {
	rows        []string
	start, goal point
}

type point struct{ row, col int }

// directions in the order they are listed to the policy.
var directions = []string{"up", "down", "left", "right"}

var offsets = map[string]point{"up": {-1, 0}, "down": {1, 0}, "left": {0, -1}, "right": {0, 1}}

func (p point) step(direction string) point {
	d := offsets[direction]
	return point{p.row + d.row, p.col + d.col}
}

// generate carves a perfect maze of cells×cells rooms with a depth-first search; the same seed
// always gives the same maze. S is the top-left room, G the bottom-right one.
func generate(cells int, seed uint64) *maze {
	n := 2*cells + 1
	grid := make([][]byte, n)
	for r := range grid {
		grid[r] = []byte(strings.Repeat("#", n))
	}
	rng := splitmix{seed}
	visited := map[point]bool{{1, 1}: true}
	stack := []point{{1, 1}}
	grid[1][1] = '.'
	for len(stack) > 0 {
		cur := stack[len(stack)-1]
		var options []string
		for _, d := range directions {
			next := cur.step(d).step(d)
			if next.row > 0 && next.row < n-1 && next.col > 0 && next.col < n-1 && !visited[next] {
				options = append(options, d)
			}
		}
		if len(options) == 0 {
			stack = stack[:len(stack)-1]
			continue
		}
		d := options[rng.next()%uint64(len(options))]
		wall, next := cur.step(d), cur.step(d).step(d)
		grid[wall.row][wall.col], grid[next.row][next.col] = '.', '.'
		visited[next] = true
		stack = append(stack, next)
	}
	m := &maze{start: point{1, 1}, goal: point{n - 2, n - 2}}
	grid[1][1], grid[n-2][n-2] = 'S', 'G'
	for _, row := range grid {
		m.rows = append(m.rows, string(row))
	}
	return m
}

// parseMaze reads the rows of a maze, as generate renders them.
func parseMaze(rows []string) (*maze, error) {
	m := &maze{rows: rows, start: point{-1, -1}, goal: point{-1, -1}}
	for r, row := range rows {
		if strings.Trim(row, "#.SG") != "" || len(row) != len(rows[0]) {
			return nil, fmt.Errorf("row %d of the maze is not a row of #, ., S and G of width %d", r, len(rows[0]))
		}
		if c := strings.IndexByte(row, 'S'); c >= 0 {
			m.start = point{r, c}
		}
		if c := strings.IndexByte(row, 'G'); c >= 0 {
			m.goal = point{r, c}
		}
	}
	if m.start.row < 0 || m.goal.row < 0 {
		return nil, fmt.Errorf("the maze needs an S and a G")
	}
	return m, nil
}

func (m *maze) open(p point) bool {
	return p.row >= 0 && p.row < len(m.rows) && p.col >= 0 && p.col < len(m.rows[p.row]) && m.rows[p.row][p.col] != '#'
}

// exits lists the directions one can move from p.
func (m *maze) exits(p point) []string {
	var out []string
	for _, d := range directions {
		if m.open(p.step(d)) {
			out = append(out, d)
		}
	}
	return out
}

// solve returns a shortest path from S to G as directions (breadth-first search).
func (m *maze) solve() []string {
	type visit struct {
		from point
		dir  string
	}
	seen := map[point]visit{m.start: {}}
	queue := []point{m.start}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == m.goal {
			var path []string
			for p := cur; p != m.start; p = seen[p].from {
				path = append([]string{seen[p].dir}, path...)
			}
			return path
		}
		for _, d := range directions {
			next := cur.step(d)
			if _, ok := seen[next]; !ok && m.open(next) {
				seen[next] = visit{cur, d}
				queue = append(queue, next)
			}
		}
	}
	return nil
}

// splitmix is a tiny deterministic random source (SplitMix64).
type splitmix struct{ state uint64 }

func (s *splitmix) next() uint64 {
	s.state += 0x9e3779b97f4a7c15
	z := s.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
