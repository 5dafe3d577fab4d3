package main

// pyRandom is Python's random.Random: the Mersenne Twister MT19937, seeded and drawn from as
// CPython does, so that the tasks here are those of the Python environment, word for word. The
// orchestrator lists tasks on one replica and starts episodes by task id on any: the same id
// must be the same question on every replica.
type pyRandom struct {
	mt    [624]uint32
	index int
}

// newPyRandom is random.Random(seed) for 0 <= seed < 2**32 (one 32-bit word of key).
func newPyRandom(seed uint32) *pyRandom {
	r := &pyRandom{}
	r.initByArray([]uint32{seed})
	return r
}

func (r *pyRandom) initGenrand(s uint32) {
	r.mt[0] = s
	for i := 1; i < len(r.mt); i++ {
		r.mt[i] = 1812433253*(r.mt[i-1]^(r.mt[i-1]>>30)) + uint32(i)
	}
	r.index = len(r.mt)
}

func (r *pyRandom) initByArray(key []uint32) {
	const n = len(r.mt)
	r.initGenrand(19650218)
	i, j := 1, 0
	k := n
	if len(key) > k {
		k = len(key)
	}
	for ; k > 0; k-- {
		r.mt[i] = (r.mt[i] ^ ((r.mt[i-1] ^ (r.mt[i-1] >> 30)) * 1664525)) + key[j] + uint32(j)
		i, j = i+1, j+1
		if i >= n {
			r.mt[0], i = r.mt[n-1], 1
		}
		if j >= len(key) {
			j = 0
		}
	}
	for k = n - 1; k > 0; k-- {
		r.mt[i] = (r.mt[i] ^ ((r.mt[i-1] ^ (r.mt[i-1] >> 30)) * 1566083941)) - uint32(i)
		i++
		if i >= n {
			r.mt[0], i = r.mt[n-1], 1
		}
	}
	r.mt[0] = 0x80000000
}

// uint32 is genrand_uint32: the next word of the generator.
func (r *pyRandom) uint32() uint32 {
	const n, m = 624, 397
	if r.index >= n {
		for kk := 0; kk < n; kk++ {
			y := (r.mt[kk] & 0x80000000) | (r.mt[(kk+1)%n] & 0x7fffffff)
			next := r.mt[(kk+m)%n] ^ (y >> 1)
			if y&1 != 0 {
				next ^= 0x9908b0df
			}
			r.mt[kk] = next
		}
		r.index = 0
	}
	y := r.mt[r.index]
	r.index++
	y ^= y >> 11
	y ^= (y << 7) & 0x9d2c5680
	y ^= (y << 15) & 0xefc60000
	y ^= y >> 18
	return y
}

// randbelow is Random._randbelow(n) for 0 < n < 2**32: getrandbits(n.bit_length()) until one
// is below n.
func (r *pyRandom) randbelow(n int) int {
	k := 0
	for v := n; v > 0; v >>= 1 {
		k++
	}
	for {
		if v := int(r.uint32() >> (32 - k)); v < n {
			return v
		}
	}
}

// randint is Random.randint(a, b): a number in [a, b].
func (r *pyRandom) randint(a, b int) int { return a + r.randbelow(b-a+1) }

// choice is Random.choice(seq), as an index into seq.
func (r *pyRandom) choice(n int) int { return r.randbelow(n) }
