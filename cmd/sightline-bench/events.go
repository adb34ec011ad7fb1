package main

import (
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"strconv"

	"github.com/sightline/sightline/wire"
)

// benchSite and benchOrigin are the site every generated event belongs to.
const (
	benchSite   = "bench"
	benchOrigin = "https://shop.example.com"
)

// page is one page of the imaginary shop and the elements users touch on it.
type page struct {
	url     string
	targets []wire.Target
	inputs  []input
}

type input struct {
	target wire.Target
	name   string
}

// shopPages is the imaginary shop the generated sessions browse. Selectors,
// classes and texts look like what DXA autocapture sends for a modern web
// app: nested selectors, several classes, visible button and link text.
var shopPages = []page{
	{
		url: benchOrigin + "/",
		targets: []wire.Target{
			{Sel: "#nav-products", Tag: "a", ID: "nav-products", Cls: []string{"nav-link"}, Text: "Products"},
			{Sel: "header > nav > a.nav-link:nth-child(3)", Tag: "a", Cls: []string{"nav-link"}, Text: "Deals"},
			{Sel: "#hero-cta", Tag: "button", ID: "hero-cta", Cls: []string{"btn", "btn-primary", "btn-lg"}, Text: "Shop the spring sale"},
			{Sel: "main > section.featured > article:nth-child(2) > a.card-link", Tag: "a", Cls: []string{"card-link"}, Text: "Trail running shoes"},
		},
		inputs: []input{
			{target: wire.Target{Sel: "#search", Tag: "input", ID: "search", Cls: []string{"form-control", "search-input"}}, name: "q"},
		},
	},
	{
		url: benchOrigin + "/products?category=running&sort=popular",
		targets: []wire.Target{
			{Sel: "main > div.product-grid > article:nth-child(3) > button.add-to-cart", Tag: "button", Cls: []string{"btn", "add-to-cart"}, Text: "Add to cart"},
			{Sel: "main > div.product-grid > article:nth-child(7) > a.product-title", Tag: "a", Cls: []string{"product-title"}, Text: "Ultralight trail shoe, women"},
			{Sel: "#filter-size-42", Tag: "label", ID: "filter-size-42", Cls: []string{"filter-chip"}, Text: "42"},
			{Sel: "nav.pagination > a:nth-child(2)", Tag: "a", Cls: []string{"page-link"}, Text: "2"},
		},
		inputs: []input{
			{target: wire.Target{Sel: "#sort", Tag: "select", ID: "sort", Cls: []string{"form-select"}}, name: "sort"},
		},
	},
	{
		url: benchOrigin + "/products/trail-runner-2?color=blue",
		targets: []wire.Target{
			{Sel: "#add-to-cart", Tag: "button", ID: "add-to-cart", Cls: []string{"btn", "btn-primary"}, Text: "Add to cart"},
			{Sel: "div.gallery > button.next", Tag: "button", Cls: []string{"gallery-nav", "next"}, Text: "›"},
			{Sel: "#size-guide", Tag: "a", ID: "size-guide", Cls: []string{"link-muted"}, Text: "Size guide"},
			{Sel: "section.reviews > button.show-more", Tag: "button", Cls: []string{"btn", "btn-link", "show-more"}, Text: "Show all 214 reviews"},
		},
		inputs: []input{
			{target: wire.Target{Sel: "#size", Tag: "select", ID: "size", Cls: []string{"form-select", "size-picker"}}, name: "size"},
			{target: wire.Target{Sel: "#qty", Tag: "input", ID: "qty", Cls: []string{"form-control", "qty"}}, name: "quantity"},
		},
	},
	{
		url: benchOrigin + "/cart",
		targets: []wire.Target{
			{Sel: "#checkout", Tag: "button", ID: "checkout", Cls: []string{"btn", "btn-primary", "btn-block"}, Text: "Proceed to checkout"},
			{Sel: "table.cart > tbody > tr:nth-child(1) > td.actions > button.remove", Tag: "button", Cls: []string{"btn", "btn-icon", "remove"}, Text: "Remove"},
			{Sel: "#continue-shopping", Tag: "a", ID: "continue-shopping", Cls: []string{"link"}, Text: "Continue shopping"},
		},
		inputs: []input{
			{target: wire.Target{Sel: "#coupon", Tag: "input", ID: "coupon", Cls: []string{"form-control"}}, name: "coupon"},
		},
	},
	{
		url: benchOrigin + "/checkout/shipping",
		targets: []wire.Target{
			{Sel: "#shipping-express", Tag: "input", ID: "shipping-express", Cls: []string{"form-check-input"}, Text: ""},
			{Sel: "form#shipping > div.actions > button[type=submit]", Tag: "button", Cls: []string{"btn", "btn-primary"}, Text: "Continue to payment"},
		},
		inputs: []input{
			{target: wire.Target{Sel: "#email", Tag: "input", ID: "email", Cls: []string{"form-control"}}, name: "email"},
			{target: wire.Target{Sel: "#street", Tag: "input", ID: "street", Cls: []string{"form-control"}}, name: "street"},
			{target: wire.Target{Sel: "#zip", Tag: "input", ID: "zip", Cls: []string{"form-control", "zip"}}, name: "zip"},
			{target: wire.Target{Sel: "#country", Tag: "select", ID: "country", Cls: []string{"form-select"}}, name: "country"},
		},
	},
}

// dxaGen produces the events of one browsing session: page views, clicks,
// input changes (values are not recorded by default, so only the field
// name travels), selects, submits and the odd custom event, with ids that
// are random UUIDs as the recorder makes them (crypto.randomUUID()).
type dxaGen struct {
	rng     *rand.Rand
	site    string
	session string
	user    string
	ts      int64
	page    int
	n       int
}

func newDXAGen(seed uint64, startMillis int64) *dxaGen {
	g := &dxaGen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), site: benchSite, ts: startMillis}
	g.session = g.uuid()
	if g.rng.IntN(3) == 0 {
		g.user = "user-" + strconv.Itoa(10000+g.rng.IntN(90000)) + "@example.com"
	}
	return g
}

// uuid returns a random version 4 UUID in its 36-character text form.
func (g *dxaGen) uuid() string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := g.rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}

// next returns the session's next event.
func (g *dxaGen) next() wire.Event {
	g.ts += 300 + g.rng.Int64N(4000)
	ev := wire.Event{Site: g.site, Session: g.session, User: g.user, ID: g.uuid(), TS: g.ts, Recv: g.ts + 20 + g.rng.Int64N(60)}
	p := &shopPages[g.page]
	r := g.rng.IntN(100)
	switch {
	case g.n == 0 || r < 12: // navigate
		g.page = g.rng.IntN(len(shopPages))
		p = &shopPages[g.page]
		ev.Type = wire.TypePageview
	case r < 65:
		ev.Type = wire.TypeClick
		ev.Target = p.targets[g.rng.IntN(len(p.targets))]
	case r < 85:
		in := p.inputs[g.rng.IntN(len(p.inputs))]
		ev.Type, ev.Target, ev.Name = wire.TypeInput, in.target, in.name
		if in.target.Tag == "select" {
			ev.Type = wire.TypeSelect
		}
	case r < 93:
		ev.Type = wire.TypeSubmit
		ev.Target = wire.Target{Sel: "form#main-form", Tag: "form", ID: "main-form"}
	default:
		ev.Type, ev.Name = wire.TypeCustom, "add_to_cart"
		ev.Props = []byte(`{"sku":"TR2-BLU-` + strconv.Itoa(38+g.rng.IntN(10)) + `","price":129.9}`)
	}
	ev.URL = p.url
	g.n++
	return ev
}

// tailJSON is a collect-payload event without its id and ts.
type tailJSON struct {
	Type   string          `json:"type"`
	URL    string          `json:"url"`
	Target *targetJSON     `json:"target,omitempty"`
	Value  string          `json:"value,omitempty"`
	Name   string          `json:"name,omitempty"`
	Props  json.RawMessage `json:"props,omitempty"`
}

type targetJSON struct {
	Sel  string   `json:"sel"`
	Tag  string   `json:"tag"`
	ID   string   `json:"id,omitempty"`
	Cls  []string `json:"cls,omitempty"`
	Text string   `json:"text,omitempty"`
}

// eventTail renders an event as collect JSON without its id and ts, so the
// load generator can stamp fresh ids and times cheaply: an event is
// `{"id":"` + ID + `","ts":` + TS + tail.
func eventTail(ev wire.Event) string {
	je := tailJSON{Type: ev.Type, URL: ev.URL, Value: ev.Value, Name: ev.Name, Props: ev.Props}
	if ev.Target.Sel != "" || ev.Target.Tag != "" {
		t := ev.Target
		je.Target = &targetJSON{Sel: t.Sel, Tag: t.Tag, ID: t.ID, Cls: t.Cls, Text: t.Text}
	}
	// Marshal cannot fail here: plain strings and props that are valid JSON.
	b, _ := json.Marshal(je)
	return "," + string(b[1:])
}
